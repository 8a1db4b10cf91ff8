use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::GgmlDType;
use candle_core::Device;

use super::weights::q5_0_as_q8_0;

#[test]
fn q5_0_to_q8_0_is_exact() {
    // Q5_0 blocks: scale 0.5 (f16 0x3800), arbitrary high bits and nibbles.
    let mut raw = Vec::new();
    for b in 0..4u8 {
        raw.extend_from_slice(&[0x00, 0x38]);
        raw.extend_from_slice(&[0xA5 ^ b, 0x3C, 0x0F ^ b, 0xF0]);
        raw.extend((0..16u8).map(|i| i.wrapping_mul(37).wrapping_add(b * 11)));
    }
    let dev = Device::Cpu;
    let q5 = qtensor_from_ggml(GgmlDType::Q5_0, &raw, vec![2, 64], &dev).expect("q5_0");
    let q8 =
        q5_0_as_q8_0(qtensor_from_ggml(GgmlDType::Q5_0, &raw, vec![2, 64], &dev).expect("q5_0"), &dev).expect("q8_0");
    assert_eq!(q8.dtype(), GgmlDType::Q8_0);
    let a: Vec<f32> = q5.dequantize(&dev).expect("a").flatten_all().expect("f").to_vec1().expect("v");
    let b: Vec<f32> = q8.dequantize(&dev).expect("b").flatten_all().expect("f").to_vec1().expect("v");
    assert_eq!(a, b);
    assert!(a.iter().any(|v| *v != 0.0));
}

/// The blocked CPU matmul (vendor/candle-core, for more than one row) gives, bit for bit,
/// what the row-at-a-time path gives each row alone: a batch changes no output.
#[test]
fn a_batch_through_the_blocked_matmul_equals_each_row_alone() {
    use candle_core::quantized::{QMatMul, QTensor};
    use candle_core::{Module as _, Tensor};
    let dev = Device::Cpu;
    // Not a multiple of any task's column count, and more than one pass of 16 rows.
    let (n, k) = (300, 512);
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.1).collect();
    let w = Tensor::from_vec(w, (n, k), &dev).expect("w");
    for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K] {
        let mm = QMatMul::from_qtensor(QTensor::quantize(&w, dtype).expect("quantize")).expect("qmatmul");
        for m in [2usize, 7, 40] {
            let x: Vec<f32> = (0..m * k).map(|i| (i * 104_729 % 997) as f32 / 498.0 - 1.0).collect();
            let x = Tensor::from_vec(x, (m, k), &dev).expect("x");
            let batched: Vec<Vec<f32>> = mm.forward(&x).expect("batched").to_vec2().expect("rows");
            for (r, row) in batched.iter().enumerate() {
                let alone: Vec<Vec<f32>> =
                    mm.forward(&x.narrow(0, r, 1).expect("row")).expect("alone").to_vec2().expect("row");
                assert_eq!(row, &alone[0], "{dtype:?}, {m} rows: row {r} differs");
            }
        }
    }
}

/// The Q8_0 kernels (vendor/candle-core, avx.rs) that this CPU can run give, bit for bit,
/// the same dot products in every tile shape, and those are the scalar path's up to
/// float rounding. A kernel that mixed up a lane, a scale or a row fails here.
#[cfg(target_arch = "x86_64")]
#[test]
fn every_q8_0_kernel_here_gives_the_same_dot_products() {
    use candle_core::quantized::avx::{q8_dot_kinds_here, vec_dot_q8_0_q8_0_tile_as, Q8DotKind};
    use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
    let k = 640; // 20 blocks, as in the demo model's output head
    let quantized = |seed: usize| {
        // Values from -1 to 1: each block's largest quantizes to ±127, the extreme.
        let xs: Vec<f32> = (0..k).map(|i| (((i + seed) * 7919 + seed * 31) % 2001) as f32 / 1000.0 - 1.0).collect();
        let mut q = vec![BlockQ8_0::zeros(); k / 32];
        BlockQ8_0::from_float(&xs, &mut q);
        q
    };
    let weights: Vec<Vec<BlockQ8_0>> = (0..4).map(|s| quantized(11 + s)).collect();
    let acts: Vec<Vec<BlockQ8_0>> = (0..4).map(|s| quantized(503 + 17 * s)).collect();
    let ws = [0, 1, 2, 3].map(|i| weights[i].as_slice());
    let ys = [0, 1, 2, 3].map(|i| acts[i].as_slice());
    let one = |kind, w: usize, y: usize| vec_dot_q8_0_q8_0_tile_as(kind, [ws[w]], [ys[y]])[0][0];
    let kinds = q8_dot_kinds_here();
    assert_eq!(kinds.last(), Some(&Q8DotKind::Avx2), "the portable kernel runs everywhere");
    for kind in kinds {
        let tile = vec_dot_q8_0_q8_0_tile_as(kind, ws, ys);
        let column = |y: usize| vec_dot_q8_0_q8_0_tile_as(kind, ws, [ys[y]])[0];
        for y in 0..4 {
            assert_eq!(column(y), tile[y], "{kind:?}: 4 × 1 differs from 4 × 4 for activation row {y}");
            for w in 0..4 {
                let portable = one(Q8DotKind::Avx2, w, y);
                assert_eq!(one(kind, w, y).to_bits(), portable.to_bits(), "{kind:?} ({w}, {y})");
                assert_eq!(tile[y][w].to_bits(), portable.to_bits(), "{kind:?} tile ({w}, {y})");
                let scalar = BlockQ8_0::vec_dot_unopt(k, ws[w], ys[y]);
                assert!(
                    (portable - scalar).abs() <= 1e-4 * scalar.abs().max(1.0),
                    "({w}, {y}): {portable} vs {scalar}"
                );
            }
        }
    }
    let distinct: std::collections::BTreeSet<u32> =
        (0..16).map(|i| one(Q8DotKind::Avx2, i % 4, i / 4).to_bits()).collect();
    assert!(distinct.len() > 8, "the test data must give distinct dot products");
}

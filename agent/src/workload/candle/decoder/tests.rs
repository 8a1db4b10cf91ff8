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

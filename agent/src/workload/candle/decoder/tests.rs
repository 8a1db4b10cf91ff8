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

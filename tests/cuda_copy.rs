//! The bandwidth copy kernel copies every byte (it sets the floors the benchmarks report against).

mod common;

use gkd::backend::cuda::bandwidth;

#[test]
fn copy_kernel_copies_every_byte() {
    let Some(dev) = common::cuda_or_skip("cuda_copy::copy_kernel_copies_every_byte") else { return };
    let s = dev.stream().clone();
    for n in [16usize, 4096, 16 * 1_000_003] {
        let host: Vec<u8> = (0..n).map(|i| (i * 31 % 251) as u8).collect();
        let src = s.clone_htod(&host).unwrap();
        let mut dst = s.clone_htod(&vec![0xAAu8; n]).unwrap();
        bandwidth::copy(&dev, &src, &mut dst).unwrap();
        assert_eq!(s.clone_dtoh(&dst).unwrap(), host, "{n} bytes");
    }
    let src = s.alloc_zeros::<u8>(20).unwrap();
    let mut dst = s.alloc_zeros::<u8>(20).unwrap();
    assert!(bandwidth::copy(&dev, &src, &mut dst).is_err(), "20 bytes is not a multiple of 16");
    let bw = bandwidth::measure_copy_bandwidth(&dev, 1 << 28, 5).unwrap();
    assert!(bw.is_finite() && bw > 0.0);
}

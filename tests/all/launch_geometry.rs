//! Launch geometry: the tiles, depth splits and grid of the GEMM engine that matmul and conv2d
//! share, and the multiply-and-shift divisions the conv loaders use instead of integer division.

use nabla::Generator;
use nabla::cuda::division_magic;
use nabla::cuda::gemm::plan;

#[test]
fn large_gemms_get_128_tiles_and_no_depth_splits() {
    let p = plan(4096, 4096, 4096, 1, 132, 64);
    assert_eq!((p.tile, p.splits), ((128, 128), 1));
    assert_eq!(p.kernel("matmul", "f32"), "matmul_f32");
    assert_eq!(p.config().grid_dim, (32, 32, 1));
    assert_eq!(p.config().block_dim, (256, 1, 1));
}

#[test]
fn small_gemms_get_64_tiles_and_deep_ones_split_their_depth_to_fill_the_card() {
    // the MLP's first layer at batch 256: 8 tiles of 128 would leave most of 132 SMs idle
    let p = plan(256, 512, 784, 1, 132, 1);
    assert_eq!((p.tile, p.splits), ((64, 64), 1));
    assert_eq!(p.kernel("matmul", "bf16"), "matmul_small_bf16");
    // the ResNet layer's weight gradient: 64 x 576 outputs, 200,704 deep, 9 tiles of 64
    let p = plan(64, 576, 64 * 56 * 56, 1, 132, 128);
    assert_eq!((p.tile, p.splits), ((64, 64), 30));
    assert_eq!(p.config().grid_dim, (9, 1, 30));
    // splits stay at least 512 deep, and within the caller's cap
    assert_eq!(plan(64, 576, 600, 1, 132, 128).splits, 1);
    assert_eq!(plan(64, 576, 2048, 1, 132, 128).splits, 4);
    assert_eq!(plan(64, 576, 1 << 30, 1, 132, 8).splits, 8);
}

#[test]
fn problems_of_at_most_64_rows_get_64_by_128_tiles_when_they_fill_the_card() {
    // the ResNet layer's forward: 64 output channels x 200,704 pixels, 576 deep
    let p = plan(64, 64 * 56 * 56, 576, 1, 132, 1);
    assert_eq!((p.tile, p.splits), ((64, 128), 1));
    assert_eq!(p.kernel("conv2d_fwd", "f32"), "conv2d_fwd_wide_f32");
    assert_eq!(p.config().grid_dim, (1568, 1, 1));
    // 65 rows take the square tiles
    assert_eq!(plan(65, 64 * 56 * 56, 576, 1, 132, 1).tile, (128, 128));
}

#[test]
fn grids_stay_within_the_hardware_limits() {
    let p = plan(1 << 24, 64, 64, 100_000, 132, 1);
    let (x, y, z) = p.config().grid_dim;
    assert!(x >= 1 && y <= 65535 && z <= 65535, "{x} {y} {z}");
    let empty = plan(0, 0, 0, 1, 132, 4);
    assert_eq!(empty.config().grid_dim, (1, 1, 1));
}

#[test]
fn multiply_and_shift_division_is_exact_below_2_pow_31() {
    let divide = |n: u32, d: u32| {
        let (magic, shift) = division_magic(d);
        ((n as u64 * magic) >> shift) as u32
    };
    let mut rng = Generator::new(9);
    let edges = [1u32, 2, 3, 5, 7, 9, 25, 49, 121, 3025, 65_535, 65_536, (1 << 30) + 1, i32::MAX as u32];
    for &d in &edges {
        for n in
            [0, 1, d - 1, d, d + 1, 2 * d - 1, i32::MAX as u32 - 1, i32::MAX as u32].map(|n| n.min(i32::MAX as u32))
        {
            assert_eq!(divide(n, d), n / d, "{n} / {d}");
        }
    }
    for _ in 0..200_000 {
        let d = 1 + (rng.next_u64() % (1 << (1 + rng.next_u64() % 31))) as u32;
        let n = (rng.next_u64() % (1u64 << 31)) as u32;
        assert_eq!(divide(n, d.min(i32::MAX as u32)), n / d.min(i32::MAX as u32), "{n} / {d}");
    }
}

#[test]
fn matrix_products_with_fewer_tiles_than_sms_split_their_depth() {
    use nabla::cuda::gemm::{max_matmul_splits, pipelined_config};
    // The char-GPT's weight gradients over 64 x 256 tokens: 9 tiles of 128 x 128 for the
    // 384 x 384 projection, which alone would leave 123 of 132 SMs idle.
    let (cfg, splits) = pipelined_config((384, 384, 16384), 1, 132, max_matmul_splits(384 * 384));
    assert_eq!(splits, 30);
    assert_eq!(cfg.grid_dim, (3, 3, 30));
    // 36 tiles: 8 splits; a product that fills the card, or a shallow one, keeps one.
    assert_eq!(pipelined_config((1536, 384, 16384), 1, 132, 64).1, 8);
    assert_eq!(pipelined_config((4096, 4096, 4096), 1, 132, 64).1, 1);
    assert_eq!(pipelined_config((384, 384, 600), 1, 132, 64).1, 1);
    // The workspace of partial products stays under 2^25 elements.
    assert_eq!(max_matmul_splits(384 * 384), 64);
    assert_eq!(max_matmul_splits(1 << 22), 8);
    assert_eq!(max_matmul_splits(1 << 30), 1);
}

//! The launch geometry of the tiled GEMM engine that matmul and conv2d share: which tile
//! instantiation runs, how a deep product is split, and the grid.

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

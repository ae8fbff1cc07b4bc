//! nabla's integration tests, one module per area, built as one test executable (so the
//! kernels and data embedded in the library are linked once).

mod common;

/// Records each thread's largest allocation, for the loader fuzzer (`fuzz.rs`).
#[global_allocator]
static ALLOCATOR: fuzz::Allocator = fuzz::Allocator {};

mod checkpoint;
mod cli;
mod conv;
mod cpu_fast;
mod cpu_reference;
mod data;
mod fuzz;
mod gpu_vs_cpu;
mod gradients;
mod graphs;
mod kernels_compile;
mod launch_geometry;
mod matmul_splits;
mod metrics;
mod mixed_precision;
mod nn;
mod optim;
mod params_mirror;
mod pool;
mod run_folder;
mod safety;
mod tensor_cores;
mod training;
mod transformer;
mod vision;

//! Fuzzes one of nabla's loaders with seeded mutations of a valid file:
//! `cargo run --release --example fuzz -- LOADER N [SEED]`, LOADER one of safetensors,
//! checkpoint, optimizer, idx, idx-gz, cifar, csv, png, jpeg, history (or `all`). Prints the
//! counts (inputs, Ok, Err, panic, hang, over-limit) and exits non-zero on any finding.

mod harness;

#[global_allocator]
static ALLOCATOR: harness::LargestAllocation = harness::LargestAllocation;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        eprintln!("usage: fuzz LOADER N [SEED]; LOADER: all or one of {:?}", harness::LOADERS);
        std::process::ExitCode::FAILURE
    };
    let (Some(loader), Some(Ok(n))) = (args.first(), args.get(1).map(|n| n.parse::<usize>())) else {
        return usage();
    };
    let seed = match args.get(2).map(|s| s.parse::<u64>()) {
        None => 0,
        Some(Ok(seed)) => seed,
        Some(Err(_)) => return usage(),
    };
    let loaders: Vec<&str> = if loader == "all" { harness::LOADERS.to_vec() } else { vec![loader.as_str()] };
    if loaders.iter().any(|l| !harness::LOADERS.contains(l)) {
        return usage();
    }
    // Panics are counted, not printed one by one.
    std::panic::set_hook(Box::new(|_| {}));
    let mut clean = true;
    for loader in loaders {
        let started = std::time::Instant::now();
        let counts = harness::fuzz(loader, n, seed, |i, what| eprintln!("{loader}: input {i} {what}"));
        println!("{loader:>12}: {counts} ({:.1}s)", started.elapsed().as_secs_f64());
        clean &= counts.clean();
    }
    if clean { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE }
}

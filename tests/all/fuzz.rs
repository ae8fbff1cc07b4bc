//! The loaders under a few thousand mutated inputs each (the fuzzer of `examples/fuzz`, which
//! runs any number locally): every input is loaded or refused, none panics, hangs or asks
//! for more than 512 MiB at once.

#[path = "../../examples/fuzz/harness.rs"]
mod harness;

/// The allocator the fuzzer reads (installed for this test executable in `main.rs`).
pub type Allocator = harness::LargestAllocation;

#[test]
fn the_allocation_record_sees_a_large_allocation() {
    let (buffer, largest) = harness::largest_allocation(|| vec![0u8; 600 << 20]);
    assert_eq!(buffer.len(), 600 << 20);
    assert!(largest >= 600 << 20, "{largest}");
}

#[test]
fn every_loader_answers_thousands_of_mutated_inputs_without_a_panic_a_hang_or_a_huge_allocation() {
    let inputs = std::env::var("NABLA_FUZZ_INPUTS").ok().and_then(|n| n.parse().ok()).unwrap_or(2000);
    let mut findings = Vec::new();
    for loader in harness::LOADERS {
        let counts =
            harness::fuzz(loader, inputs, 2026, |i, what| findings.push(format!("{loader} input {i}: {what}")));
        eprintln!("fuzz {loader:>12}: {counts}");
        assert!(counts.ok > 0 && counts.err > 0, "{loader}: {counts} (the mutations should reach both outcomes)");
    }
    assert!(findings.is_empty(), "{findings:#?}");
}

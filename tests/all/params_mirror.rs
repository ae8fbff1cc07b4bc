//! `src/cuda/params.rs` is the Rust mirror of `kernels/params.h`, rendered by this test from the
//! header (a small bindgen for the header's restricted C: structs of `long long`, `double`,
//! fixed arrays and nested structs). The test fails when the committed mirror drifts;
//! `NABLA_BLESS=1 cargo test --release --test all params_mirror` rewrites it.

use std::fmt::Write as _;
use std::path::Path;

fn rust_type(c_type: &str) -> String {
    match c_type {
        "long long" => "i64".to_string(),
        "double" => "f64".to_string(),
        other => other
            .strip_prefix("struct ")
            .unwrap_or_else(|| panic!("unsupported C type `{other}` in params.h"))
            .to_string(),
    }
}

/// Renders the mirror of the header's `#define`s and structs.
fn render(header: &str) -> String {
    let mut out = String::new();
    out.push_str(
        "//! Generated from kernels/params.h by tests/all/params_mirror.rs (NABLA_BLESS=1 rewrites it): do not edit.\n",
    );
    out.push_str("//! Rust mirrors of the kernel parameter structs, passed to kernels by value.\n");
    let mut in_struct = false;
    for raw in header.lines() {
        let line = raw.split("//").next().unwrap().trim();
        if let Some(rest) = line.strip_prefix("#define ") {
            let mut parts = rest.split_whitespace();
            let (name, value) = (parts.next().unwrap(), parts.next().unwrap());
            write!(out, "\n/// Mirror of `{name}`.\npub const {name}: usize = {value};\n").unwrap();
        } else if let Some(rest) = line.strip_prefix("struct ").filter(|r| r.ends_with('{')) {
            let name = rest.trim_end_matches('{').trim();
            write!(out, "\n/// Mirror of `struct {name}` in kernels/params.h.\n#[repr(C)]\n#[derive(Clone, Copy, Debug, Default, PartialEq)]\npub struct {name} {{\n").unwrap();
            in_struct = true;
        } else if line == "};" && in_struct {
            out.push_str("}\n");
            in_struct = false;
        } else if in_struct && !line.is_empty() {
            let decl = line.trim_end_matches(';');
            let (c_type, field) = decl.rsplit_once(' ').expect("a field is `type name;`");
            match field.split_once('[') {
                Some((name, len)) => {
                    writeln!(out, "    pub {name}: [{}; {}],", rust_type(c_type.trim()), len.trim_end_matches(']'))
                        .unwrap()
                }
                None => writeln!(out, "    pub {field}: {},", rust_type(c_type.trim())).unwrap(),
            }
        }
    }
    out
}

#[test]
fn rust_mirror_of_kernel_params_matches_the_header() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = std::fs::read_to_string(root.join("kernels/params.h")).unwrap();
    let mirror_path = root.join("src/cuda/params.rs");
    let rendered = render(&header);
    if std::env::var("NABLA_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&mirror_path, &rendered).unwrap();
    }
    let committed = std::fs::read_to_string(&mirror_path).unwrap();
    assert!(
        committed == rendered,
        "src/cuda/params.rs drifted from kernels/params.h; run NABLA_BLESS=1 cargo test --release --test all params_mirror\n--- rendered ---\n{rendered}"
    );
}

#[test]
fn renderer_handles_every_field_form() {
    let header =
        "#define N 4\nstruct A {\n    long long x; // c\n    double y;\n    long long z[N];\n    struct B w;\n};\n";
    let r = render(header);
    assert!(r.contains("pub const N: usize = 4;"));
    assert!(
        r.contains("pub struct A {\n    pub x: i64,\n    pub y: f64,\n    pub z: [i64; N],\n    pub w: B,\n}"),
        "{r}"
    );
}

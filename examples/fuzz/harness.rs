//! A seeded mutation fuzzer for nabla's loaders, shared by `examples/fuzz` (any number of
//! inputs: `cargo run --release --example fuzz -- LOADER N [SEED]`) and the test that runs a
//! few thousand per loader in CI (`tests/all/fuzz.rs`).
//!
//! Each input is a valid file (built here, so nothing large is shipped) with 1 to 4 mutations:
//! bit flips, bytes and 32/64-bit words set to boundary values, truncation, insertions, copied
//! spans, and in text formats numbers replaced by extreme ones. Each runs on its own thread
//! and is classed as `Ok`, `Err`, a panic, a hang (no answer within the time limit) or over the
//! allocation limit (one allocation larger than [`ALLOCATION_LIMIT`], as the process's global
//! allocator, [`LargestAllocation`], records per thread). Hand-written (a few dozen lines)
//! because cargo-fuzz needs a nightly compiler and libFuzzer, and CI has neither.
#![allow(dead_code)]

use nabla::cpu::CacheAligned;
use nabla::io::image::Image;
use nabla::io::{safetensors, save_module};
use nabla::nn::{Activation, Mlp, Module};
use nabla::optim::{Adam, AdamConfig, Optimizer};
use nabla::train::{self, EpochSummary};
use nabla::{DType, Device, Generator, Result, Tensor};
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest single allocation an input may cause: 512 MiB.
pub const ALLOCATION_LIMIT: usize = 512 << 20;

/// How long one input may take.
pub const TIME_LIMIT: Duration = Duration::from_secs(10);

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// nabla's allocator (the system's, large blocks on cache lines), recording the largest
/// allocation each thread asks for (a loader that believes a header asks for gigabytes before
/// it checks anything).
pub struct LargestAllocation;

// SAFETY: every call is passed to `CacheAligned` unchanged; the record is a thread-local `Cell`
// with a const initialiser, which neither allocates nor re-enters the allocator.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { CacheAligned.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { CacheAligned.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { CacheAligned.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { CacheAligned.dealloc(ptr, layout) }
    }
}

/// `f`'s result and the largest single allocation it made on this thread.
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LARGEST.with(|l| l.replace(0));
    let result = f();
    let largest = LARGEST.with(|l| l.replace(before.max(l.get())));
    (result, largest)
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

/// Every loader the fuzzer knows, by the name the example takes.
pub const LOADERS: [&str; 10] =
    ["safetensors", "checkpoint", "optimizer", "idx", "idx-gz", "cifar", "csv", "png", "jpeg", "history"];

/// What a run of inputs gave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Inputs tried.
    pub inputs: usize,
    /// Loaded.
    pub ok: usize,
    /// Refused with an error.
    pub err: usize,
    /// Panicked.
    pub panic: usize,
    /// Gave no answer within [`TIME_LIMIT`].
    pub hang: usize,
    /// Asked for an allocation over [`ALLOCATION_LIMIT`].
    pub over_limit: usize,
}

impl Counts {
    /// Whether every input was answered, in time and memory, without a panic.
    pub fn clean(&self) -> bool {
        self.panic == 0 && self.hang == 0 && self.over_limit == 0
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} inputs: {} Ok, {} Err, {} panic, {} hang, {} over-limit",
            self.inputs, self.ok, self.err, self.panic, self.hang, self.over_limit
        )
    }
}

/// The perceptron the checkpoint and optimizer seeds belong to.
fn perceptron() -> Mlp {
    Mlp::new(&[784, 10], Activation::Relu, 0.0, &Device::Cpu, &mut Generator::new(0)).expect("a perceptron")
}

/// A valid input for `loader`.
fn seed_input(loader: &str) -> Vec<u8> {
    let cpu = Device::Cpu;
    let mut rng = Generator::new(1);
    match loader {
        "safetensors" => {
            let tensors = vec![
                ("a".to_string(), Tensor::randn(&[3, 4], DType::F32, &cpu, &mut rng).unwrap()),
                ("b".to_string(), Tensor::from_vec(vec![1i64, 2, 3], &[3], &cpu).unwrap()),
                ("c".to_string(), Tensor::randn(&[2, 2], DType::BF16, &cpu, &mut rng).unwrap()),
            ];
            let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
            safetensors::serialize(&tensors, &metadata).unwrap()
        }
        "checkpoint" => {
            let metadata = [("model", "perceptron"), ("dataset", "mnist"), ("classes", "10"), ("image_size", "28")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into_iter()
                .collect();
            let dir = scratch_dir("seed");
            let path = dir.join("seed.safetensors");
            save_module(&path, &perceptron(), &metadata).unwrap();
            std::fs::read(&path).unwrap()
        }
        "optimizer" => {
            let model = perceptron();
            let mut adam = Adam::new(model.parameters(), AdamConfig::adam(1e-3)).unwrap();
            let x = Tensor::rand(&[2, 784], DType::F32, &cpu, &mut rng).unwrap();
            let y = Tensor::from_vec(vec![1i64, 2], &[2], &cpu).unwrap();
            model.forward(&x).unwrap().cross_entropy(&y).unwrap().backward().unwrap();
            adam.step().unwrap();
            let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
            let state: Vec<(String, Tensor)> =
                adam.state().into_iter().map(|(i, key, t)| (format!("{}.{key}", names[i]), t)).collect();
            safetensors::serialize(&state, &BTreeMap::new()).unwrap()
        }
        "idx" | "idx-gz" => {
            let mut bytes = [0x0803u32, 3, 28, 28].iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<u8>>();
            bytes.extend((0..3 * 784).map(|i| (i % 251) as u8));
            bytes
        }
        "cifar" => (0..2 * 3073).map(|i| if i % 3073 == 0 { (i / 3073) as u8 } else { (i % 256) as u8 }).collect(),
        "csv" => b"x0,x1,label\n0.5,1.25,0\n-1,2e3,1\n3,4,2\n".to_vec(),
        "png" => {
            let data = (0..8 * 6 * 3).map(|i| (i * 7 % 256) as u8).collect();
            Image { width: 8, height: 6, channels: 3, data }.encode_png().unwrap()
        }
        "jpeg" => include_bytes!("../../tests/fixtures/checker.jpg").to_vec(),
        "history" => {
            let epoch = |epoch, loss: f64| EpochSummary {
                epoch,
                train_loss: loss,
                train_accuracy: Some(0.9),
                val_loss: Some(loss * 1.1),
                val_accuracy: 0.88,
                seconds: 1.5,
            };
            serde_json::to_vec(&[epoch(1, 0.7), epoch(2, 0.4)]).unwrap()
        }
        other => panic!("unknown loader `{other}` (one of {LOADERS:?})"),
    }
}

/// Loads `bytes` as `loader` does, in `dir` (a folder of this thread's own).
fn load(loader: &str, bytes: &[u8], dir: &Path) -> Result<()> {
    let cpu = Device::Cpu;
    let file = |name: &str| -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    match loader {
        "safetensors" => safetensors::deserialize("fuzz", bytes).map(drop),
        "checkpoint" => train::load_trained(&file("c.safetensors"), &cpu, None, None).map(drop),
        "optimizer" => {
            let model = perceptron();
            let mut adam = Adam::new(model.parameters(), AdamConfig::adam(1e-3))?;
            train::load_optimizer(&file("o.safetensors"), &mut adam, &model)
        }
        "idx" | "idx-gz" => {
            let labels = [0x0801u32, 3].iter().flat_map(|v| v.to_be_bytes()).chain([1, 2, 3]).collect::<Vec<u8>>();
            std::fs::write(dir.join("train-labels-idx1-ubyte"), labels).unwrap();
            let (keep, drop_name) = if loader == "idx" {
                ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz")
            } else {
                ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte")
            };
            let _ = std::fs::remove_file(dir.join(drop_name));
            file(keep);
            nabla::data::mnist::load(dir, "train", &cpu).map(drop)
        }
        "cifar" => nabla::data::cifar::parse("fuzz", bytes, &cpu).map(drop),
        "csv" => match std::str::from_utf8(bytes) {
            Ok(text) => nabla::data::csv::parse(text, -1, nabla::data::csv::Target::Class, &cpu).map(drop),
            Err(e) => Err(nabla::Error::invalid("csv", e.to_string())),
        },
        "png" | "jpeg" => Image::decode("fuzz", bytes).and_then(|image| image.to_tensor(&cpu)).map(drop),
        "history" => {
            let history = train::read_history(&file("history.json"))?;
            nabla::viz::curves(&history).map(drop)
        }
        other => panic!("unknown loader `{other}`"),
    }
}

/// Boundary values for bytes and words.
const BYTES: [u8; 6] = [0, 1, 0x7f, 0x80, 0xfe, 0xff];
const WORDS: [u64; 8] = [0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 1 << 40, u64::MAX / 2, u64::MAX];
const NUMBERS: [&str; 9] =
    ["0", "-1", "1e308", "-1e308", "NaN", "99999999999999999999", "1000000000", "4294967296", ""];

/// Applies 1 to 4 random mutations to `bytes`.
fn mutate(bytes: &mut Vec<u8>, rng: &mut Generator) {
    let pick = |rng: &mut Generator, n: usize| rng.below(n.max(1) as u64).unwrap() as usize;
    for _ in 0..1 + pick(rng, 4) {
        let len = bytes.len();
        match pick(rng, 8) {
            0 if len > 0 => {
                let at = pick(rng, len);
                bytes[at] ^= 1 << pick(rng, 8);
            }
            1 if len > 0 => {
                let at = pick(rng, len);
                bytes[at] = BYTES[pick(rng, BYTES.len())];
            }
            2 if len >= 8 => {
                let at = pick(rng, len - 7);
                let word = WORDS[pick(rng, WORDS.len())];
                let raw = if pick(rng, 2) == 0 { word.to_le_bytes() } else { word.to_be_bytes() };
                let width = if pick(rng, 2) == 0 { 4 } else { 8 };
                bytes[at..at + width].copy_from_slice(&raw[8 - width..]);
            }
            3 => bytes.truncate(pick(rng, len)),
            4 => {
                let at = pick(rng, len + 1);
                let extra: Vec<u8> = (0..1 + pick(rng, 16)).map(|_| rng.next_u64() as u8).collect();
                bytes.splice(at..at, extra);
            }
            5 if len > 0 => {
                let (from, at) = (pick(rng, len), pick(rng, len));
                let span = bytes[from..(from + 1 + pick(rng, 64)).min(len)].to_vec();
                bytes.splice(at..at, span);
            }
            _ => {
                // A number in text replaced by an extreme one (JSON headers, CSV, histories).
                let digits: Vec<usize> = (0..len).filter(|&i| bytes[i].is_ascii_digit()).collect();
                if let Some(&start) = digits.get(pick(rng, digits.len())) {
                    let end = (start..len).find(|&i| !bytes[i].is_ascii_digit() && bytes[i] != b'.').unwrap_or(len);
                    let number = NUMBERS[pick(rng, NUMBERS.len())];
                    bytes.splice(start..end, number.bytes());
                }
            }
        }
    }
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nabla-fuzz-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `n` mutated inputs through `loader`, from `seed`. `on_finding` hears about each panic,
/// hang and over-limit input (its number and what happened).
pub fn fuzz(loader: &str, n: usize, seed: u64, mut on_finding: impl FnMut(usize, &str)) -> Counts {
    let valid = seed_input(loader);
    let mut rng = Generator::new(seed ^ 0xf022);
    let mut counts = Counts::default();
    let dir = scratch_dir(loader);
    for i in 0..n {
        let mut bytes = valid.clone();
        if loader == "idx-gz" && rng.below(4).unwrap() != 0 {
            // Mostly mutate the inflated bytes and compress them again, so inputs reach the
            // IDX parser; sometimes mutate the gzip stream itself.
            mutate(&mut bytes, &mut rng);
            bytes = gzip(&bytes);
        } else if loader == "idx-gz" {
            bytes = gzip(&bytes);
            mutate(&mut bytes, &mut rng);
        } else {
            mutate(&mut bytes, &mut rng);
        }
        counts.inputs += 1;
        let (loader_name, dir) = (loader.to_string(), dir.clone());
        let (sender, receiver) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let (result, largest) = largest_allocation(|| load(&loader_name, &bytes, &dir));
            let _ = sender.send((result.is_ok(), largest));
        });
        match receiver.recv_timeout(TIME_LIMIT) {
            Ok((_, largest)) if largest > ALLOCATION_LIMIT => {
                counts.over_limit += 1;
                on_finding(i, &format!("allocated {largest} bytes at once"));
            }
            Ok((true, _)) => counts.ok += 1,
            Ok((false, _)) => counts.err += 1,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                counts.hang += 1;
                on_finding(i, "no answer in time");
                continue; // the thread is left to finish on its own
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                counts.panic += 1;
                on_finding(i, "panicked");
            }
        }
        let _ = worker.join();
    }
    let _ = std::fs::remove_dir_all(&dir);
    counts
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

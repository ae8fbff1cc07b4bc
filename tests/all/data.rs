//! Data loading: the MNIST IDX reader (raw, gzip, truncated and corrupt files), the shipped
//! subset, the batching loader, synthetic sets and the CSV loader.

use nabla::data::{DataLoader, Dataset, csv, mnist, synthetic};
use nabla::{DType, Device, Error, Tensor};
use std::io::Write;
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nabla-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 3];
    for v in [n, rows, cols] {
        out.extend(v.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 1];
    out.extend((labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

#[test]
fn idx_files_raw_and_gzipped_load_as_scaled_pixels_and_labels() {
    let dir = temp_dir("idx");
    let pixels: Vec<u8> = (0..2 * 28 * 28).map(|i| (i % 256) as u8).collect();
    write(&dir, "train-images-idx3-ubyte.gz", &gzip(&idx_images(2, 28, 28, &pixels)));
    write(&dir, "train-labels-idx1-ubyte", &idx_labels(&[7, 3]));
    let data = mnist::load(&dir, "train", &Device::Cpu).unwrap();
    assert_eq!(data.features.shape(), &[2, 784]);
    assert_eq!(data.targets.to_vec::<i64>().unwrap(), vec![7, 3]);
    let f = data.features.to_vec::<f32>().unwrap();
    assert_eq!((f[0], f[255], f[256]), (0.0, 1.0, 0.0));
}

#[test]
fn truncated_corrupt_and_mismatched_idx_files_are_clear_errors() {
    let dir = temp_dir("idx-bad");
    let pixels = vec![0u8; 3 * 784];
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        ("truncated images", idx_images(3, 28, 28, &pixels[..2000]), idx_labels(&[1, 2, 3]), "header says 3 images"),
        ("short header", vec![0, 0, 8], idx_labels(&[1]), "too short"),
        ("wrong magic", idx_labels(&[1; 20]), idx_labels(&[1, 2, 3]), "not an IDX image file"),
        (
            "truncated labels",
            idx_images(3, 28, 28, &pixels),
            idx_labels(&[1, 2, 3])[..10].to_vec(),
            "header says 3 labels",
        ),
        ("count mismatch", idx_images(3, 28, 28, &pixels), idx_labels(&[1, 2]), "3 images"),
        ("bad label", idx_images(3, 28, 28, &pixels), idx_labels(&[1, 12, 3]), "label 12"),
    ];
    for (what, images, labels, expected) in cases {
        write(&dir, "train-images-idx3-ubyte", &images);
        write(&dir, "train-labels-idx1-ubyte", &labels);
        let err = mnist::load(&dir, "train", &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains(expected), "{what}: {err}");
    }
    // a gzip stream cut short
    let gz = gzip(&idx_images(3, 28, 28, &pixels));
    write(&dir, "t10k-images-idx3-ubyte.gz", &gz[..gz.len() / 2]);
    write(&dir, "t10k-labels-idx1-ubyte", &idx_labels(&[1, 2, 3]));
    let err = mnist::load(&dir, "t10k", &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("gzip") || err.contains("header says"), "{err}");
    assert!(matches!(
        mnist::load(&dir.join("missing"), "train", &Device::Cpu),
        Err(Error::InvalidArgument { op: "mnist", .. })
    ));
}

#[test]
fn shipped_mnist_subset_has_the_documented_sizes_and_class_counts() {
    let train = mnist::shipped("train", &Device::Cpu).unwrap();
    let test = mnist::shipped("t10k", &Device::Cpu).unwrap();
    assert_eq!((train.len(), test.len()), (8000, 2000));
    let mut counts = [0usize; 10];
    test.targets.to_vec::<i64>().unwrap().iter().for_each(|&l| counts[l as usize] += 1);
    assert_eq!(counts, [192, 217, 204, 193, 203, 183, 225, 218, 156, 209]);
    assert!(mnist::shipped("valid", &Device::Cpu).is_err());
}

#[test]
fn data_loader_batches_shuffles_reproducibly_and_drops_the_last_batch_on_request() {
    let n = 10;
    let data = Dataset::new(
        Tensor::arange(0.0, n as f64, 1.0, DType::F32, &Device::Cpu).unwrap().reshape(&[n, 1]).unwrap(),
        Tensor::arange(0.0, n as f64, 1.0, DType::I64, &Device::Cpu).unwrap(),
    )
    .unwrap();
    let sizes = |batches: &[Dataset]| batches.iter().map(Dataset::len).collect::<Vec<_>>();
    let mut plain = DataLoader::new(data.clone(), 4).unwrap();
    let batches = plain.epoch().unwrap();
    assert_eq!(sizes(&batches), vec![4, 4, 2]);
    assert_eq!(batches[1].targets.to_vec::<i64>().unwrap(), vec![4, 5, 6, 7]);
    let mut dropping = DataLoader::new(data.clone(), 4).unwrap().drop_last(true);
    assert_eq!((dropping.batches_per_epoch(), sizes(&dropping.epoch().unwrap())), (2, vec![4, 4]));
    let order = |seed| -> Vec<Vec<i64>> {
        let mut loader = DataLoader::new(data.clone(), 3).unwrap().shuffle(seed);
        (0..2)
            .map(|_| loader.epoch().unwrap().iter().flat_map(|b| b.targets.to_vec::<i64>().unwrap()).collect())
            .collect()
    };
    let (a, b) = (order(5), order(5));
    assert_eq!(a, b, "same seed, same orders");
    assert_ne!(a[0], a[1], "each epoch reshuffles");
    let mut sorted = a[0].clone();
    sorted.sort();
    assert_eq!(sorted, (0..n as i64).collect::<Vec<_>>(), "a permutation of every example");
    assert!(DataLoader::new(data, 0).is_err());
}

#[test]
fn dataset_split_and_select_keep_rows_together() {
    let data = synthetic::xor(10, 1, &Device::Cpu).unwrap();
    let (train, val) = data.split(0.3).unwrap();
    assert_eq!((train.len(), val.len()), (7, 3));
    assert_eq!(val.targets.to_vec::<i64>().unwrap(), data.targets.narrow(0, 7, 3).unwrap().to_vec::<i64>().unwrap());
    let picked = data.select(&[9, 0]).unwrap();
    assert_eq!(picked.features.to_vec::<f32>().unwrap()[..2], data.features.to_vec::<f32>().unwrap()[18..20]);
    assert!(Dataset::new(data.features.clone(), data.targets.narrow(0, 0, 5).unwrap()).is_err());
}

#[test]
fn synthetic_sets_have_the_promised_structure() {
    let xor = synthetic::xor(500, 2, &Device::Cpu).unwrap();
    let (x, y) = (xor.features.to_vec::<f32>().unwrap(), xor.targets.to_vec::<i64>().unwrap());
    for i in 0..500 {
        assert_eq!(y[i], ((x[2 * i] > 0.0) != (x[2 * i + 1] > 0.0)) as i64);
    }
    let spirals = synthetic::two_spirals(50, 0.0, 3, &Device::Cpu).unwrap();
    assert_eq!(
        (spirals.features.shape(), spirals.targets.to_vec::<i64>().unwrap().iter().sum::<i64>()),
        (&[100, 2][..], 50)
    );
    let (reg, w, b) = synthetic::linear_regression(20, 3, 0.0, 4, &Device::Cpu).unwrap();
    let (x, y) = (reg.features.to_vec::<f64>().unwrap(), reg.targets.to_vec::<f64>().unwrap());
    for i in 0..20 {
        let want: f64 = (0..3).map(|j| x[3 * i + j] * w[j]).sum::<f64>() + b;
        assert!((y[i] - want).abs() < 1e-4);
    }
}

#[test]
fn csv_loader_reads_classes_and_values_and_names_bad_lines() {
    let text = "a,b,label\n1.0,2.0,1\n3,4,0\n\n5,6,2\n";
    let data = csv::parse(text, -1, csv::Target::Class, &Device::Cpu).unwrap();
    assert_eq!(data.features.to_vec::<f32>().unwrap(), vec![1., 2., 3., 4., 5., 6.]);
    assert_eq!(data.targets.to_vec::<i64>().unwrap(), vec![1, 0, 2]);
    let values = csv::parse("y,x\n0.5,1\n1.5,2\n", 0, csv::Target::Value, &Device::Cpu).unwrap();
    assert_eq!((values.targets.shape(), values.features.to_vec::<f32>().unwrap()), (&[2, 1][..], vec![1.0, 2.0]));
    for (bad, expected) in [
        ("1,2\n3,x\n", "line 2"),
        ("1,2,3\n4,5\n", "2 fields"),
        ("1,2\n3,4.5\n", "not a non-negative integer"),
        ("h1,h2\n", "no data rows"),
    ] {
        let err = csv::parse(bad, -1, csv::Target::Class, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains(expected), "{bad:?}: {err}");
    }
    assert!(csv::parse("1,2\n", 5, csv::Target::Value, &Device::Cpu).is_err());
    assert!(matches!(
        csv::load(Path::new("/nonexistent/file.csv"), 0, csv::Target::Value, &Device::Cpu),
        Err(Error::Io { .. })
    ));
}

#[test]
fn cifar10_records_load_and_damaged_files_are_rejected() {
    use nabla::data::cifar;
    let dir = temp_dir("cifar");
    let mut bytes = Vec::new();
    for label in [3u8, 9] {
        bytes.push(label);
        bytes.extend((0..3072).map(|i| ((i + label as usize) % 256) as u8));
    }
    for (i, name) in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ]
    .iter()
    .enumerate()
    {
        write(&dir, name, &bytes[..if i == 5 { cifar::RECORD } else { bytes.len() }]);
    }
    let (train, test) = cifar::load_dir(&dir, &Device::Cpu).unwrap();
    assert_eq!((train.features.shape(), test.len()), (&[10, 3, 32, 32][..], 1));
    assert_eq!(train.targets.to_vec::<i64>().unwrap()[..2], [3, 9]);
    let px = train.features.to_vec::<f32>().unwrap();
    assert_eq!((px[0], px[1024], px[3072]), (3.0 / 255.0, ((1024 + 3) % 256) as f32 / 255.0, 9.0 / 255.0));
    let err = cifar::parse("short", &bytes[..5000], &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("whole number"), "{err}");
    let mut bad = bytes.clone();
    bad[cifar::RECORD] = 10;
    assert!(cifar::parse("bad label", &bad, &Device::Cpu).unwrap_err().to_string().contains("label 10"));
    assert!(cifar::load_dir(&dir.join("missing"), &Device::Cpu).is_err());
}

#[test]
fn crop_and_flip_augmentation_moves_pixels_without_changing_them() {
    use nabla::data::augment::random_crop_flip;
    let x = Tensor::arange(1.0, 17.0, 1.0, DType::F32, &Device::Cpu).unwrap().reshape(&[1, 1, 4, 4]).unwrap();
    let same = random_crop_flip(&x, 0, false, &mut nabla::Generator::new(1)).unwrap();
    assert_eq!(same.to_vec::<f32>().unwrap(), x.to_vec::<f32>().unwrap());
    let mut flips = 0;
    let mut rng = nabla::Generator::new(2);
    for _ in 0..20 {
        let y = random_crop_flip(&x, 0, true, &mut rng).unwrap().to_vec::<f32>().unwrap();
        if y[0] == 4.0 {
            flips += 1;
            assert_eq!(&y[..4], &[4.0, 3.0, 2.0, 1.0]);
        } else {
            assert_eq!(y, x.to_vec::<f32>().unwrap());
        }
    }
    assert!((4..=16).contains(&flips), "about half flip: {flips}");
    let shifted = random_crop_flip(&x, 2, false, &mut nabla::Generator::new(3)).unwrap().to_vec::<f32>().unwrap();
    assert!(shifted.iter().all(|v| *v == 0.0 || (1.0..=16.0).contains(v)));
}

//! safetensors checkpoints (round trips of every file dtype, validation of damaged files, atomic
//! writes) and loading into modules, PyTorch's state dicts included.

use nabla::io::safetensors::FileDtype;
use nabla::io::{load_into_module, safetensors, save_module};
use nabla::nn::{Activation, Mlp, Module};
use nabla::{DType, Device, Generator, Tensor};
use std::collections::BTreeMap;

fn named() -> Vec<(String, Tensor)> {
    let mut rng = Generator::new(1);
    vec![
        ("a.weight".to_string(), Tensor::randn(&[3, 4], DType::F32, &Device::Cpu, &mut rng).unwrap()),
        ("b".to_string(), Tensor::randn(&[2], DType::F64, &Device::Cpu, &mut rng).unwrap()),
        ("c".to_string(), Tensor::randn(&[5], DType::BF16, &Device::Cpu, &mut rng).unwrap()),
        ("d".to_string(), Tensor::from_vec(vec![-3i64, 9], &[2], &Device::Cpu).unwrap()),
        ("e".to_string(), Tensor::randn(&[2, 2], DType::F16, &Device::Cpu, &mut rng).unwrap().t().unwrap()),
    ]
}

#[test]
fn safetensors_round_trips_every_dtype_and_metadata() {
    let tensors = named();
    let meta = BTreeMap::from([("model".to_string(), "mlp".to_string())]);
    let bytes = safetensors::serialize(&tensors, &meta).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!((8 + header_len) % 8, 0, "data starts 8-byte aligned");
    let back = safetensors::deserialize("mem", &bytes).unwrap();
    assert_eq!(back.metadata, meta);
    for (name, t) in &tensors {
        let got = &back.tensors[name];
        assert_eq!((got.shape(), got.dtype()), (t.shape(), t.dtype()), "{name}");
        assert_eq!(got.to_vec::<f64>().unwrap(), t.to_vec::<f64>().unwrap(), "{name}");
    }
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    assert_eq!(header["a.weight"]["dtype"], "F32");
    assert_eq!(header["a.weight"]["data_offsets"].as_array().unwrap().len(), 2);
}

#[test]
fn damaged_safetensors_files_are_rejected_with_the_reason() {
    let bytes = safetensors::serialize(&named(), &BTreeMap::new()).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut huge_header = bytes.clone();
    huge_header[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let mut bad_json = bytes.clone();
    bad_json[8] = b'[';
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    let mut wrong_size = bytes[..8].to_vec();
    wrong_size.extend(header.replacen("[3,4]", "[3,5]", 1).as_bytes());
    wrong_size.extend(&bytes[8 + header_len..]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "header too small"),
        ("truncated data", bytes[..bytes.len() - 3].to_vec(), "file not fully covered"),
        ("header past the end", huge_header, "header too large"),
        ("not JSON", bad_json, "invalid JSON in header"),
        ("shape and bytes disagree", wrong_size, "invalid shape, data type, or offset"),
        ("trailing bytes", [bytes.clone(), vec![0; 4]].concat(), "file not fully covered"),
    ];
    for (what, data, expected) in cases {
        let err =
            safetensors::deserialize(what, &data).err().unwrap_or_else(|| panic!("{what} was accepted")).to_string();
        assert!(err.contains(expected) && err.contains(what), "{what}: {err}");
    }
}

#[test]
fn saving_is_atomic_and_loading_into_a_module_checks_names_and_shapes() {
    let dir = std::env::temp_dir().join(format!("nabla-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("model.safetensors");
    let a = Mlp::new(&[4, 8, 3], Activation::Relu, 0.0, &Device::Cpu, &mut Generator::new(1)).unwrap();
    save_module(&path, &a, &BTreeMap::new()).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, vec!["model.safetensors"], "no temporary file is left behind");
    let b = Mlp::new(&[4, 8, 3], Activation::Relu, 0.0, &Device::Cpu, &mut Generator::new(2)).unwrap();
    load_into_module(&safetensors::load(&path).unwrap(), &b).unwrap();
    for ((na, ta), (nb, tb)) in a.named_parameters().iter().zip(b.named_parameters()) {
        assert_eq!((na, ta.to_vec::<f32>().unwrap()), (&nb, tb.to_vec::<f32>().unwrap()));
    }
    let wider = Mlp::new(&[4, 9, 3], Activation::Relu, 0.0, &Device::Cpu, &mut Generator::new(2)).unwrap();
    let err = load_into_module(&safetensors::load(&path).unwrap(), &wider).unwrap_err().to_string();
    assert!(err.contains("layers.0.weight") && err.contains("[8, 4]"), "{err}");
    let deeper = Mlp::new(&[4, 8, 8, 3], Activation::Relu, 0.0, &Device::Cpu, &mut Generator::new(2)).unwrap();
    assert!(load_into_module(&safetensors::load(&path).unwrap(), &deeper).is_err());
    // a save that cannot complete leaves what was there, and no temporary file
    let blocked = dir.join("blocked.safetensors");
    std::fs::create_dir_all(blocked.join("keep")).unwrap();
    assert!(save_module(&blocked, &a, &BTreeMap::new()).is_err());
    assert!(blocked.join("keep").is_dir());
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, vec!["blocked.safetensors", "model.safetensors"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_integer_bool_and_float_file_dtype_is_written_and_read_back_exactly() {
    let ints = Tensor::from_vec(vec![0i64, 1, 0, 1], &[2, 2], &Device::Cpu).unwrap();
    let bytes = Tensor::from_vec(vec![0i64, 7, 255], &[3], &Device::Cpu).unwrap();
    let signed = Tensor::from_vec(vec![-128i64, 5, 127], &[3], &Device::Cpu).unwrap();
    let wide = Tensor::from_vec(vec![i32::MIN as i64, -1, i32::MAX as i64], &[3], &Device::Cpu).unwrap();
    let floats = Tensor::from_vec(vec![0.5f32, -1.25, 3.0], &[3], &Device::Cpu).unwrap();
    let cases = [
        ("bool", ints.clone(), FileDtype::BOOL),
        ("u8", bytes.clone(), FileDtype::U8),
        ("i8", signed.clone(), FileDtype::I8),
        ("i16", signed.clone(), FileDtype::I16),
        ("u16", bytes.clone(), FileDtype::U16),
        ("i32", wide.clone(), FileDtype::I32),
        ("u32", bytes.clone(), FileDtype::U32),
        ("u64", bytes.clone(), FileDtype::U64),
        ("f16", floats.clone(), FileDtype::F16),
        ("bf16", floats.clone(), FileDtype::BF16),
        ("f64", floats.clone(), FileDtype::F64),
    ];
    let typed: Vec<(String, Tensor, FileDtype)> =
        cases.iter().map(|(n, t, d)| (n.to_string(), t.clone(), *d)).collect();
    let back = safetensors::deserialize("mem", &safetensors::serialize_as(&typed, &BTreeMap::new()).unwrap()).unwrap();
    for (name, tensor, dtype) in &cases {
        assert_eq!(back.file_dtypes[*name], *dtype, "{name}");
        assert_eq!(back.tensors[*name].shape(), tensor.shape(), "{name}");
        assert_eq!(back.tensors[*name].to_vec::<f64>().unwrap(), tensor.to_vec::<f64>().unwrap(), "{name}");
    }
    assert_eq!(back.tensors["i32"].dtype(), DType::I64, "integers widen exactly to i64");
    // Values that do not fit the requested file dtype are refused, naming the tensor.
    for (tensor, dtype) in
        [(signed.clone(), FileDtype::U8), (bytes.clone(), FileDtype::BOOL), (floats.clone(), FileDtype::I32)]
    {
        let err = safetensors::serialize_as(&[("x".into(), tensor, dtype)], &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("x:"), "{err}");
    }
    // 8-bit floats (written by hand: 0x38 is 1.0 in E4M3, 0x3c is 1.0 in E5M2) widen to f32.
    let header = r#"{"e4":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]},"e5":{"dtype":"F8_E5M2","shape":[2],"data_offsets":[2,4]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header.as_bytes());
    file.extend([0x38, 0xb8, 0x3c, 0x40]);
    let eight = safetensors::deserialize("fp8", &file).unwrap();
    assert_eq!(eight.tensors["e4"].to_vec::<f32>().unwrap(), vec![1.0, -1.0]);
    assert_eq!(eight.tensors["e5"].to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
}

/// A ResNet's state dict as `torch.save(model.state_dict())` + `safetensors.torch.save_file`
/// lay it out: no metadata, `num_batches_tracked` as an int64 scalar beside every batch norm.
fn pytorch_state_dict(model: &dyn Module) -> Vec<(String, Tensor)> {
    let mut tensors = nabla::io::state_dict(model);
    tensors.retain(|(name, _)| !name.ends_with("num_batches_tracked"));
    let norms: Vec<String> =
        tensors.iter().filter_map(|(n, _)| n.strip_suffix(".running_var").map(str::to_string)).collect();
    for norm in norms {
        tensors
            .push((format!("{norm}.num_batches_tracked"), Tensor::from_vec(vec![17i64], &[], &Device::Cpu).unwrap()));
    }
    tensors
}

#[test]
fn pytorch_state_dicts_load_both_ways_and_num_batches_tracked_is_written_and_ignored() {
    use nabla::nn::ResNet;
    let dir = std::env::temp_dir().join(format!("nabla-torch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let a = ResNet::new(1, 10, 4, &Device::Cpu, &mut Generator::new(1)).unwrap();
    // From PyTorch: a plain state dict (no metadata) loads into a fresh model.
    let from_torch = dir.join("from_torch.safetensors");
    safetensors::save(&from_torch, &pytorch_state_dict(&a), &BTreeMap::new()).unwrap();
    let b = ResNet::new(1, 10, 4, &Device::Cpu, &mut Generator::new(2)).unwrap();
    load_into_module(&safetensors::load(&from_torch).unwrap(), &b).unwrap();
    for ((na, ta), (_, tb)) in nabla::io::state_dict(&a).iter().zip(nabla::io::state_dict(&b)) {
        if !na.ends_with("num_batches_tracked") {
            assert_eq!(ta.to_vec::<f64>().unwrap(), tb.to_vec::<f64>().unwrap(), "{na}");
        }
    }
    // To PyTorch: nabla writes num_batches_tracked beside each batch norm, as an int64 scalar.
    let to_torch = dir.join("to_torch.safetensors");
    save_module(&to_torch, &b, &BTreeMap::new()).unwrap();
    let saved = safetensors::load(&to_torch).unwrap();
    let counter = &saved.tensors["bn1.num_batches_tracked"];
    assert_eq!((counter.shape(), counter.dtype()), (&[][..], DType::I64));
    assert_eq!(saved.file_dtypes["bn1.num_batches_tracked"], FileDtype::I64);
    let names: Vec<&String> = saved.tensors.keys().collect();
    let expected: Vec<String> = pytorch_state_dict(&a).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), expected.len());
    assert!(expected.iter().all(|n| saved.tensors.contains_key(n)), "the same names as PyTorch's state dict");
    // Without num_batches_tracked (older files) it loads too.
    let mut plain = pytorch_state_dict(&a);
    plain.retain(|(n, _)| !n.ends_with("num_batches_tracked"));
    let older = dir.join("older.safetensors");
    safetensors::save(&older, &plain, &BTreeMap::new()).unwrap();
    load_into_module(&safetensors::load(&older).unwrap(), &b).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

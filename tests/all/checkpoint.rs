//! safetensors checkpoints (round trips, validation of damaged files, atomic writes), loading
//! into modules, and the JSON reader.

use nabla::io::json::Json;
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
    let header = Json::parse(std::str::from_utf8(&bytes[8..8 + header_len]).unwrap().trim_end()).unwrap();
    let entry = header.get("a.weight").unwrap();
    assert_eq!(entry.get("dtype").unwrap().as_str(), Some("F32"));
    assert_eq!(entry.get("data_offsets").unwrap().as_array().unwrap().len(), 2);
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
        ("empty", Vec::new(), "too short"),
        ("truncated data", bytes[..bytes.len() - 3].to_vec(), "claims bytes"),
        ("header past the end", huge_header, "runs past the end"),
        ("not JSON", bad_json, "not valid JSON"),
        ("shape and bytes disagree", wrong_size, "claims bytes"),
        ("trailing bytes", [bytes.clone(), vec![0; 4]].concat(), "trailing bytes"),
    ];
    for (what, data, expected) in cases {
        let err =
            safetensors::deserialize(what, &data).err().unwrap_or_else(|| panic!("{what} was accepted")).to_string();
        assert!(err.contains(expected), "{what}: {err}");
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
fn json_parser_accepts_valid_text_and_rejects_malformed_text() {
    let v = Json::parse(r#"{"a": [1, 2.5e1, -3], "b": "x\"\u00e9\n", "c": {"d": null, "e": true}}"#).unwrap();
    assert_eq!(v.get("a").unwrap().as_array().unwrap()[1].as_f64(), Some(25.0));
    assert_eq!(v.get("b").unwrap().as_str(), Some("x\"é\n"));
    assert_eq!(Json::parse(&v.to_string()).unwrap(), v, "the writer's output parses back");
    for bad in [
        "",
        "{",
        "[1,]",
        "{\"a\" 1}",
        "{\"a\":1,\"a\":2}",
        "tru",
        "\"open",
        "1 2",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    ] {
        assert!(Json::parse(bad).is_err(), "{bad:?} was accepted");
    }
}

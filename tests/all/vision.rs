//! The convolution operator on images (the classic kernels through conv2d), image files
//! (PNG round trips, JPEG decoding, image folders), pictures of training, and the
//! `convolve` / `viz` commands.

use nabla::io::image::{Image, load_image_folder};
use nabla::metrics::ConfusionMatrix;
use nabla::train::EpochSummary;
use nabla::vision::{CLASSIC_KERNELS, classic_kernel, convolve, parse_kernel};
use nabla::{DType, Device, Tensor, viz};
use std::path::{Path, PathBuf};
use std::process::Command;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nabla-vision-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A 1x8x8 picture: 0.2 background with a 0.8 square at rows and columns 2-3.
fn square() -> Tensor {
    let mut v = vec![0.2f32; 64];
    for y in 2..4 {
        for x in 2..4 {
            v[y * 8 + x] = 0.8;
        }
    }
    Tensor::from_vec(v, &[1, 8, 8], &Device::Cpu).unwrap()
}

fn at(t: &Tensor, y: usize, x: usize) -> f32 {
    t.to_vec::<f32>().unwrap()[y * 8 + x]
}

#[test]
fn classic_kernels_give_the_expected_images_on_a_small_picture() {
    let img = square();
    let run = |name: &str| convolve(&img, &classic_kernel(name).unwrap(), &Device::Cpu).unwrap();
    assert_eq!(run("identity").to_vec::<f32>().unwrap(), img.to_vec::<f32>().unwrap());
    for name in ["edge", "edge-cross", "edge-all"] {
        let e = run(name);
        assert!(at(&e, 5, 5).abs() < 1e-6, "{name}: silent on flat ground");
        assert!(at(&e, 1, 1).abs() > 0.05 || name == "edge-cross", "{name}: responds at the square's corner");
    }
    // edge-all at the square's inside corner (2, 2): 8 * 0.8 - (3 * 0.8 + 5 * 0.2) = 3.0
    assert!((at(&run("edge-all"), 2, 2) - 3.0).abs() < 1e-5);
    // edge-cross at (2, 2): 4 * 0.8 - (2 * 0.8 + 2 * 0.2) = 1.2
    assert!((at(&run("edge-cross"), 2, 2) - 1.2).abs() < 1e-5);
    // sharpen: 5 * 0.8 - (2 * 0.8 + 2 * 0.2) = 2.0 inside corner; flat ground stays flat
    let s = run("sharpen");
    assert!((at(&s, 2, 2) - 2.0).abs() < 1e-5 && (at(&s, 5, 5) - 0.2).abs() < 1e-5);
    // box blur at (1, 1): the 3x3 window holds one square pixel: (8 * 0.2 + 0.8) / 9
    assert!((at(&run("box-blur"), 1, 1) - (8.0 * 0.2 + 0.8) / 9.0).abs() < 1e-6);
    // emboss weights sum to 1: flat ground keeps its value; the square's lower-right edge lights up
    let e = run("emboss");
    assert!((at(&e, 5, 5) - 0.2).abs() < 1e-5 && at(&e, 1, 1) > 0.2 && e.shape() == [1, 8, 8]);
    assert_eq!(CLASSIC_KERNELS.len(), 7);
    assert!(classic_kernel("blur-everything").is_err());
}

#[test]
fn user_kernels_parse_and_colour_images_convolve_per_channel() {
    let k = parse_kernel("0,-1,0; -1,5,-1 ;0,-1,0").unwrap();
    assert_eq!(k.to_vec::<f32>().unwrap(), classic_kernel("sharpen").unwrap().to_vec::<f32>().unwrap());
    assert!(parse_kernel("1,2;3,4").is_err());
    assert!(parse_kernel("1,x,3").is_err());
    let rgb = Tensor::cat(&[&square(), &square().mul_scalar(0.5).unwrap(), &square()], 0).unwrap();
    let out = convolve(&rgb, &classic_kernel("edge-all").unwrap(), &Device::Cpu).unwrap();
    assert_eq!(out.shape(), &[3, 8, 8]);
    let v = out.to_vec::<f32>().unwrap();
    assert!((v[64 + 2 * 8 + 2] - 1.5).abs() < 1e-5, "the half-bright channel gives half the response");
}

#[test]
fn png_round_trips_and_jpeg_decodes() {
    let img = Image { width: 3, height: 2, channels: 3, data: (0..18).map(|i| (i * 13) as u8).collect() };
    assert_eq!(Image::decode("mem", &img.encode_png().unwrap()).unwrap(), img);
    let grey = Image::decode(
        "grey.jpg",
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grey.jpg")).unwrap(),
    )
    .unwrap();
    assert_eq!((grey.width, grey.height, grey.channels), (5, 4, 1));
    for (i, &v) in grey.data.iter().enumerate() {
        assert!((v as i32 - 12 * i as i32).abs() <= 3, "pixel {i}: {v}");
    }
    let colour = Image::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checker.jpg")).unwrap();
    assert_eq!((colour.width, colour.height, colour.channels), (12, 8, 3));
    let px = |x: usize, y: usize, c: usize| colour.data[(y * 12 + x) * 3 + c] as i32;
    assert!((px(5, 2, 0) - 100).abs() <= 12 && (px(5, 2, 1) - 60).abs() <= 12, "JPEG keeps the colours");
    assert!(Image::decode("junk", b"\xff\xd8junk").is_err());
    assert!(Image::decode("text", b"hello").unwrap_err().to_string().contains("not a PNG or JPEG"));
    let t = img.to_tensor(&Device::Cpu).unwrap();
    assert_eq!(t.shape(), &[3, 2, 3]);
    assert_eq!(Image::from_tensor(&t).unwrap(), img);
    let big = img.resize(6, 4).unwrap();
    assert_eq!((big.width, big.height, big.data.len()), (6, 4, 72));
}

#[test]
fn image_folders_load_one_class_per_folder() {
    let dir = temp_dir("folder");
    for (class, value) in [("cats", 10u8), ("dogs", 200u8)] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..2 {
            let img = Image { width: 4 + i, height: 4, channels: 3, data: vec![value; (4 + i) * 4 * 3] };
            img.save_png(&dir.join(class).join(format!("{i}.png"))).unwrap();
        }
        std::fs::write(dir.join(class).join("notes.txt"), "not an image").unwrap();
    }
    let (data, classes) = load_image_folder(&dir, 8, 1, &Device::Cpu).unwrap();
    assert_eq!(classes, vec!["cats", "dogs"]);
    assert_eq!(data.features.shape(), &[4, 1, 8, 8]);
    assert_eq!(data.targets.to_vec::<i64>().unwrap(), vec![0, 0, 1, 1]);
    let px = data.features.to_vec::<f32>().unwrap();
    assert!((px[0] - 10.0 / 255.0).abs() < 1e-3 && (px[3 * 64] - 200.0 / 255.0).abs() < 1e-3);
    assert!(load_image_folder(&dir.join("cats"), 8, 1, &Device::Cpu).is_err(), "no class folders");
}

#[test]
fn pictures_have_the_promised_layout() {
    let weights =
        Tensor::arange(0.0, 6.0 * 25.0, 1.0, DType::F32, &Device::Cpu).unwrap().reshape(&[6, 1, 5, 5]).unwrap();
    let filters = viz::filter_grid(&weights, "features.0.weight").unwrap();
    assert_eq!(filters.channels, 3);
    // Six 5x5 filters enlarged to at least 72 pixels a side, in a grid of 3 columns and 2 rows.
    assert!(filters.width >= 3 * 72 && filters.height >= 2 * 72, "{}x{}", filters.width, filters.height);
    // Each filter is stretched to its own range: black and white squares of 15x15 pixels.
    let blacks = filters.data.chunks(3).filter(|p| *p == [0, 0, 0]).count();
    assert!(blacks >= 6 * 15 * 15, "{blacks} black pixels");
    let maps = viz::feature_grid(
        &Tensor::rand(&[4, 7, 7], DType::F32, &Device::Cpu, &mut nabla::Generator::new(1)).unwrap(),
        "features.1",
    )
    .unwrap();
    assert!(maps.width >= 2 * 7 * 13 && maps.height >= 2 * 7 * 13, "7x7 maps enlarged to about 96 pixels");
    for empty in [&[0usize, 1, 5, 5][..], &[2, 0, 5, 5]] {
        assert!(viz::filter_grid(&Tensor::zeros(empty, DType::F32, &Device::Cpu).unwrap(), "w").is_err());
    }
    assert!(viz::feature_grid(&Tensor::zeros(&[0, 4, 4], DType::F32, &Device::Cpu).unwrap(), "m").is_err());
    let history: Vec<EpochSummary> = (1..=5)
        .map(|e| EpochSummary {
            epoch: e,
            train_loss: 1.0 / e as f64,
            train_accuracy: Some(0.85 + 0.02 * e as f64),
            val_loss: Some(1.2 / e as f64),
            val_accuracy: 0.9 + 0.01 * e as f64,
            seconds: 1.0,
        })
        .collect();
    let curves = viz::curves(&history).unwrap();
    let has = |img: &nabla::io::image::Image, rgb: [u8; 3]| img.data.chunks(3).any(|p| p == rgb);
    assert!(has(&curves, [200, 30, 30]) && has(&curves, [30, 60, 200]), "train in red, validation in blue");
    let csv = viz::curves_csv(&history);
    assert_eq!(csv.lines().next(), Some("epoch,train_loss,train_accuracy,val_loss,val_accuracy,seconds"));
    let second: Vec<f64> = csv.lines().nth(2).unwrap().split(',').map(|v| v.parse().unwrap()).collect();
    assert_eq!(second, vec![2.0, 0.5, history[1].train_accuracy.unwrap(), 0.6, history[1].val_accuracy, 1.0]);
    let cm = ConfusionMatrix::new(
        &Tensor::from_vec(vec![0i64, 1, 1], &[3], &Device::Cpu).unwrap(),
        &Tensor::from_vec(vec![0i64, 1, 0], &[3], &Device::Cpu).unwrap(),
        2,
    )
    .unwrap();
    let names = vec!["cat".to_string(), "dog, big".to_string()];
    let heat = viz::confusion_heatmap(&cm, &names).unwrap();
    // Row "cat" splits 1/1 (half shade), row "dog" is all on the diagonal (full shade).
    assert!(has(&heat, [8, 48, 107]) && has(&heat, [132, 152, 181]), "shares of the true class as shades");
    assert!(viz::confusion_heatmap(&cm, &names[..1]).is_err(), "one name per class");
    assert_eq!(viz::confusion_csv(&cm, &names), "true\\predicted,cat,\"dog, big\"\ncat,1,1\n\"dog, big\",0,1\n");
}

#[test]
fn convolve_and_viz_commands_write_pngs() {
    let dir = temp_dir("cli");
    let input = dir.join("in.png");
    Image::from_tensor(&square()).unwrap().resize(24, 24).unwrap().save_png(&input).unwrap();
    let nabla = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_nabla")).args(args).output().unwrap();
    for kernel in ["edge-all", "0,-1,0;-1,5,-1;0,-1,0"] {
        let out = dir.join("out.png");
        let run =
            nabla(&["convolve", "--kernel", kernel, input.to_str().unwrap(), out.to_str().unwrap(), "--device", "cpu"]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let written = Image::load(&out).unwrap();
        assert_eq!((written.width, written.height), (24, 24));
    }
    let history = dir.join("history.json");
    std::fs::write(&history, r#"[{"epoch":1,"train_loss":0.5,"val_accuracy":0.9,"seconds":1},{"epoch":2,"train_loss":0.3,"val_accuracy":0.95,"seconds":1}]"#).unwrap();
    let curves = dir.join("curves.png");
    let run = nabla(&["viz", "curves", history.to_str().unwrap(), curves.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(Image::load(&curves).unwrap().width > 100);
    for bad in [
        vec!["convolve", "--kernel", "nope", "a.png", "b.png"],
        vec!["convolve", "--kernel", "edge", "/nonexistent.png", "b.png"],
        vec!["viz", "sideways"],
    ] {
        let run = nabla(&bad);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            !run.status.success() && stderr.starts_with("error: ") && !stderr.contains("panicked"),
            "{bad:?}: {stderr}"
        );
    }
}

#[test]
fn images_whose_headers_claim_too_many_pixels_are_refused_before_decoding() {
    // A real 1x1 PNG whose header is rewritten to claim 9 x 2^31 - 1 pixels (CRC fixed up).
    let mut png = Image { width: 1, height: 1, channels: 1, data: vec![7] }.encode_png().unwrap();
    png[16..20].copy_from_slice(&9u32.to_be_bytes());
    png[20..24].copy_from_slice(&2_147_483_647u32.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&png[12..29]);
    png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    let err = Image::decode("huge.png", &png).unwrap_err().to_string();
    assert!(err.contains("9x2147483647") && err.contains("exceeds the limit"), "{err}");
    // The same for a JPEG whose frame header claims 60000 x 60000.
    let mut jpeg = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grey.jpg")).unwrap();
    let sof = jpeg.windows(2).position(|w| w[0] == 0xff && (w[1] == 0xc0 || w[1] == 0xc2)).expect("a frame header");
    jpeg[sof + 5..sof + 7].copy_from_slice(&60000u16.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&60000u16.to_be_bytes());
    let err = Image::decode("huge.jpg", &jpeg).unwrap_err().to_string();
    assert!(err.contains("60000x60000") && err.contains("exceeds the limit"), "{err}");
    // An ordinary image still decodes.
    assert!(
        Image::decode("ok.png", &Image { width: 3, height: 2, channels: 1, data: vec![0; 6] }.encode_png().unwrap())
            .is_ok()
    );
}

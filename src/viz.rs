//! Pictures of what a network learned and how training went: first-layer filters, feature
//! maps, loss/accuracy curves and confusion-matrix heat-maps, drawn with `plotters` into RGB
//! images ready for PNG, with titles, axes, tick values, labels and legends. Text uses DejaVu
//! Sans compiled into the binary (`assets/fonts`), so no system font is needed. Each picture
//! has a CSV twin ([`curves_csv`], [`confusion_csv`]) for people who plot their own way.

use crate::io::image::Image;
use crate::metrics::ConfusionMatrix;
use crate::train::EpochSummary;
use crate::{Error, Result, Tensor};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::sync::OnceLock;

/// The font family every picture uses, registered once from the embedded file.
const FONT: &str = "sans-serif";

fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, include_bytes!("../assets/fonts/DejaVuSans.ttf"))
            .is_ok()
    });
    if ok { Ok(()) } else { Err(Error::invalid("viz", "the embedded font could not be read")) }
}

/// Any plotters error as ours.
fn draw_error(e: impl std::fmt::Display) -> Error {
    Error::invalid("viz", format!("drawing failed: {e}"))
}

/// Draws on a white `width` x `height` RGB canvas with `paint` and returns the image.
fn canvas(
    width: usize,
    height: usize,
    paint: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<()>,
) -> Result<Image> {
    register_font()?;
    let mut data = vec![255u8; width * height * 3];
    {
        let root = BitMapBackend::with_buffer(&mut data, (width as u32, height as u32)).into_drawing_area();
        paint(&root)?;
        root.present().map_err(draw_error)?;
    }
    Ok(Image { width, height, channels: 3, data })
}

/// Tiles equally sized grey or RGB tiles into a grid with gutters, each tile `label_room` pixels
/// taller than its picture (for its caption), under a band of `top` pixels (for the title).
/// Returns the image and each tile's top-left corner.
fn grid(tiles: &[Image], columns: usize, top: usize, label_room: usize) -> (Image, Vec<(usize, usize)>) {
    let (tw, th, c) = (tiles[0].width, tiles[0].height, tiles[0].channels);
    let columns = columns.clamp(1, tiles.len());
    let rows = tiles.len().div_ceil(columns);
    let gap = 6;
    let (width, height) = (columns * (tw + gap) + gap, top + rows * (th + label_room + gap) + gap);
    let mut data = vec![255u8; width * height * 3];
    let mut corners = Vec::with_capacity(tiles.len());
    for (i, tile) in tiles.iter().enumerate() {
        let (x0, y0) = (gap + (i % columns) * (tw + gap), top + gap + (i / columns) * (th + label_room + gap));
        corners.push((x0, y0));
        for y in 0..th {
            for x in 0..tw {
                let src = (y * tw + x) * c;
                let rgb =
                    if c == 3 { [tile.data[src], tile.data[src + 1], tile.data[src + 2]] } else { [tile.data[src]; 3] };
                let at = ((y0 + y) * width + x0 + x) * 3;
                data[at..at + 3].copy_from_slice(&rgb);
            }
        }
    }
    (Image { width, height, channels: 3, data }, corners)
}

/// One `[C, H, W]` or `[H, W]` map stretched to 0-255 (its own min to max) and enlarged
/// `scale` times with square pixels.
fn normalised(map: &Tensor, scale: usize) -> Result<Image> {
    let values = map.to_vec::<f32>()?;
    let finite = values.iter().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let lo = if lo.is_finite() { lo } else { 0.0 };
    let stretched = values.iter().map(|v| if v.is_finite() { (v - lo) / span } else { 0.0 }).collect();
    let small = Image::from_tensor(&Tensor::from_vec(stretched, map.shape(), &crate::Device::Cpu)?)?;
    let (w, h, c) = (small.width * scale, small.height * scale, small.channels);
    let mut data = vec![0u8; w * h * c];
    for y in 0..h {
        for x in 0..w {
            let src = ((y / scale) * small.width + x / scale) * c;
            data[(y * w + x) * c..(y * w + x + 1) * c].copy_from_slice(&small.data[src..src + c]);
        }
    }
    Ok(Image { width: w, height: h, channels: c, data })
}

/// The grid of `tiles` with `title` above it and each tile's index under it.
fn labelled_grid(tiles: &[Image], title: &str) -> Result<Image> {
    if tiles.is_empty() {
        return Err(Error::invalid("viz", format!("{title}: nothing to draw")));
    }
    let (top, label_room) = (34, 16);
    let (grid_image, corners) = grid(tiles, (tiles.len() as f64).sqrt().ceil() as usize, top, label_room);
    let (tw, th) = (tiles[0].width, tiles[0].height);
    // Wide enough for the title (DejaVu Sans at 18 px averages under 11 px a character).
    let width = grid_image.width.max(title.chars().count() * 11 + 12);
    let mut picture =
        Image { width, height: grid_image.height, channels: 3, data: vec![255; width * grid_image.height * 3] };
    for y in 0..grid_image.height {
        let row = &grid_image.data[y * grid_image.width * 3..(y + 1) * grid_image.width * 3];
        picture.data[y * width * 3..y * width * 3 + row.len()].copy_from_slice(row);
    }
    let base = picture.clone();
    register_font()?;
    {
        let root =
            BitMapBackend::with_buffer(&mut picture.data, (base.width as u32, base.height as u32)).into_drawing_area();
        let title_style = TextStyle::from((FONT, 18).into_font()).pos(Pos::new(HPos::Left, VPos::Top));
        root.draw(&Text::new(title.to_string(), (6, 8), title_style)).map_err(draw_error)?;
        let label = TextStyle::from((FONT, 11).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        for (i, (x, y)) in corners.iter().enumerate() {
            let at = ((x + tw / 2) as i32, (y + th + 2) as i32);
            root.draw(&Text::new(i.to_string(), at, label.clone())).map_err(draw_error)?;
        }
        root.present().map_err(draw_error)?;
    }
    Ok(picture)
}

/// The filters of a `[O, C, k, k]` weight as a grid titled with `layer` and the shape: RGB for
/// three input channels, else the mean over input channels in grey; each filter stretched to
/// its own range and enlarged to at least 72 pixels a side (a 5 x 5 filter becomes 75 x 75).
pub fn filter_grid(weight: &Tensor, layer: &str) -> Result<Image> {
    let [o, c, k, _] = weight.shape() else {
        return Err(Error::shape("viz", format!("filters must be [O, C, k, k], got {:?}", weight.shape())));
    };
    let (o, c, k) = (*o, *c, *k);
    if o == 0 || c == 0 || k == 0 {
        return Err(Error::shape("viz", format!("{layer} has no filters to draw: {:?}", weight.shape())));
    }
    let scale = 72usize.div_ceil(k).clamp(2, 24);
    let mut tiles = Vec::with_capacity(o);
    for i in 0..o {
        let filter = weight.narrow(0, i, 1)?.squeeze(0)?;
        let shown = if c == 3 { filter } else { filter.mean(&[0], false)? };
        tiles.push(normalised(&shown, scale)?);
    }
    let colour = match c {
        1 => "grey",
        3 => "RGB",
        _ => "mean over input channels",
    };
    labelled_grid(&tiles, &format!("{layer} {:?}: {o} filters, {colour}", weight.shape()))
}

/// The channels of a `[C, H, W]` activation as a grid of grey maps titled with `layer`, each
/// enlarged to about 96 pixels a side.
pub fn feature_grid(maps: &Tensor, layer: &str) -> Result<Image> {
    let [c, h, w] = maps.shape() else {
        return Err(Error::shape("viz", format!("feature maps must be [C, H, W], got {:?}", maps.shape())));
    };
    if *c == 0 || *h == 0 || *w == 0 {
        return Err(Error::shape("viz", format!("{layer} has no feature maps to draw: {:?}", maps.shape())));
    }
    let scale = (96 / (*h).max(*w)).clamp(1, 16);
    let tiles = (0..*c).map(|i| normalised(&maps.narrow(0, i, 1)?.squeeze(0)?, scale)).collect::<Result<Vec<_>>>()?;
    labelled_grid(&tiles, &format!("{layer} {:?}: {c} feature maps", maps.shape()))
}

/// The colours of the training and validation series.
const TRAIN_COLOUR: RGBColor = RGBColor(200, 30, 30);
const VAL_COLOUR: RGBColor = RGBColor(30, 60, 200);

/// A line of a chart: its legend label, colour and (epoch, value) points.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// One panel of [`curves`]: `series` over `y`.
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    epochs: usize,
    y: std::ops::Range<f64>,
    series: &[Series<'_>],
) -> Result<()> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.5f64..epochs as f64 + 0.5, y)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_labels(epochs.min(10) + 1)
        .x_label_formatter(&|x| if x.fract() == 0.0 { format!("{x:.0}") } else { String::new() })
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(draw_error)?;
    for (label, colour, points) in series.iter().filter(|(_, _, p)| !p.is_empty()) {
        let colour = *colour;
        chart
            .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
            .map_err(draw_error)?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(draw_error)?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(draw_error)
}

/// Loss (left) and accuracy (right) per epoch, training in red and validation in blue, with
/// titled axes, tick values and legends. Non-finite values are left out of the lines.
pub fn curves(history: &[EpochSummary]) -> Result<Image> {
    if history.is_empty() {
        return Err(Error::invalid("viz", "the history has no epochs"));
    }
    crate::train::check_history(history)?;
    let points = |f: &dyn Fn(&EpochSummary) -> Option<f64>| -> Vec<(f64, f64)> {
        history.iter().filter_map(|h| f(h).filter(|v| v.is_finite()).map(|v| (h.epoch as f64, v))).collect()
    };
    let loss =
        [("train", TRAIN_COLOUR, points(&|h| Some(h.train_loss))), ("validation", VAL_COLOUR, points(&|h| h.val_loss))];
    let accuracy = [
        ("train", TRAIN_COLOUR, points(&|h| h.train_accuracy.map(|a| 100.0 * a))),
        ("validation", VAL_COLOUR, points(&|h| Some(100.0 * h.val_accuracy))),
    ];
    let range = |series: &[Series<'_>], floor: Option<f64>, ceiling: Option<f64>| {
        let values = series.iter().flat_map(|s| s.2.iter().map(|p| p.1));
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.08).max(1e-3 * hi.abs().max(1.0));
        let lo = floor.map_or(lo - pad, |f| (lo - pad).max(f));
        let hi = ceiling.map_or(hi + pad, |c| (hi + pad).min(c));
        if hi > lo { lo..hi } else { lo - 1.0..lo + 1.0 }
    };
    let epochs = history.iter().map(|h| h.epoch).max().unwrap_or(1).max(1);
    let (loss_range, accuracy_range) = (range(&loss, Some(0.0), None), range(&accuracy, Some(0.0), Some(100.0)));
    canvas(1000, 420, |root| {
        root.fill(&WHITE).map_err(draw_error)?;
        let (left, right) = root.split_horizontally(500);
        panel(&left, "Loss per epoch", "cross-entropy (nats)", epochs, loss_range, &loss)?;
        panel(&right, "Accuracy per epoch", "accuracy (%)", epochs, accuracy_range, &accuracy)
    })
}

/// The history as CSV: `epoch,train_loss,train_accuracy,val_loss,val_accuracy,seconds`
/// (an unknown value is an empty field).
pub fn curves_csv(history: &[EpochSummary]) -> String {
    let field = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    let mut out = String::from("epoch,train_loss,train_accuracy,val_loss,val_accuracy,seconds\n");
    for h in history {
        out.push_str(&format!(
            "{},{},{},{},{},{}\n",
            h.epoch,
            h.train_loss,
            field(h.train_accuracy),
            field(h.val_loss),
            h.val_accuracy,
            h.seconds
        ));
    }
    out
}

/// White to dark blue by `share` in [0, 1].
fn blue(share: f64) -> RGBColor {
    let shade = |full: f64| (255.0 - share.clamp(0.0, 1.0) * (255.0 - full)).round() as u8;
    RGBColor(shade(8.0), shade(48.0), shade(107.0))
}

/// The confusion matrix as a heat-map: true classes down the left, predicted classes along the
/// bottom (both by name), each cell shaded by its share of the true class's examples and
/// showing its count, and a colour scale from 0% to 100% on the right.
pub fn confusion_heatmap(cm: &ConfusionMatrix, class_names: &[String]) -> Result<Image> {
    let k = cm.counts.len();
    if k == 0 {
        return Err(Error::invalid("viz", "the confusion matrix has no classes"));
    }
    if class_names.len() != k {
        return Err(Error::invalid(
            "viz",
            format!("{} class names for a {k}-class confusion matrix", class_names.len()),
        ));
    }
    let cell = (640 / k).clamp(14, 56) as i32;
    let font = (cell / 3).clamp(8, 14) as u32;
    let longest = class_names.iter().map(|n| n.chars().count()).max().unwrap_or(1) as i32;
    let name_room = (longest * 8).clamp(24, 160) + 26;
    let (left, top) = (name_room + 10, 48);
    let side = cell * k as i32;
    let (width, height) = ((left + side + 110) as usize, (top + side + name_room + 10) as usize);
    canvas(width, height, |root| {
        let text = |size: u32, h: HPos, v: VPos| TextStyle::from((FONT, size).into_font()).pos(Pos::new(h, v));
        let draw = |t: Text<'_, (i32, i32), String>| root.draw(&t).map_err(draw_error);
        draw(Text::new(
            format!(
                "Confusion matrix ({} examples, accuracy {:.2}%)",
                cm.counts.iter().flatten().sum::<u64>(),
                100.0 * cm.accuracy()
            ),
            (10, 12),
            text(18, HPos::Left, VPos::Top),
        ))?;
        for (t, row) in cm.counts.iter().enumerate() {
            let total: u64 = row.iter().sum();
            for (p, &count) in row.iter().enumerate() {
                let share = if total == 0 { 0.0 } else { count as f64 / total as f64 };
                let (x, y) = (left + p as i32 * cell, top + t as i32 * cell);
                root.draw(&Rectangle::new([(x, y), (x + cell - 1, y + cell - 1)], blue(share).filled()))
                    .map_err(draw_error)?;
                let ink = if share > 0.5 { WHITE } else { BLACK };
                let style = text(font, HPos::Center, VPos::Center).color(&ink);
                draw(Text::new(count.to_string(), (x + cell / 2, y + cell / 2), style))?;
            }
        }
        for (i, name) in class_names.iter().enumerate() {
            let middle = i as i32 * cell + cell / 2;
            draw(Text::new(name.clone(), (left - 6, top + middle), text(font, HPos::Right, VPos::Center)))?;
            let down = TextStyle::from((FONT, font).into_font().transform(FontTransform::Rotate90))
                .pos(Pos::new(HPos::Left, VPos::Center));
            draw(Text::new(name.clone(), (left + middle, top + side + 6), down))?;
        }
        let axis = TextStyle::from((FONT, 14).into_font().transform(FontTransform::Rotate270))
            .pos(Pos::new(HPos::Center, VPos::Top));
        draw(Text::new("true class".to_string(), (4, top + side / 2), axis))?;
        draw(Text::new(
            "predicted class".to_string(),
            (left + side / 2, height as i32 - 4),
            text(14, HPos::Center, VPos::Bottom),
        ))?;
        // The colour scale: 0% at the bottom, 100% at the top.
        let (bx, steps) = (left + side + 24, 100);
        for s in 0..steps {
            let y0 = top + side - (s + 1) * side / steps;
            let y1 = top + side - s * side / steps;
            root.draw(&Rectangle::new([(bx, y0), (bx + 18, y1)], blue((s as f64 + 0.5) / steps as f64).filled()))
                .map_err(draw_error)?;
        }
        root.draw(&Rectangle::new([(bx, top), (bx + 18, top + side)], BLACK.stroke_width(1))).map_err(draw_error)?;
        for (share, label) in [(0.0, "0%"), (0.5, "50%"), (1.0, "100%")] {
            let y = top + side - (share * side as f64) as i32;
            draw(Text::new(label.to_string(), (bx + 24, y), text(12, HPos::Left, VPos::Center)))?;
        }
        draw(Text::new("of true class".to_string(), (bx - 4, top - 6), text(11, HPos::Left, VPos::Bottom)))
    })
}

/// The confusion matrix as CSV: a header `true\predicted,NAME...`, then one row per true class.
pub fn confusion_csv(cm: &ConfusionMatrix, class_names: &[String]) -> String {
    let quote = |s: &str| {
        if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
    };
    let mut out = String::from("true\\predicted");
    for name in class_names {
        out.push(',');
        out.push_str(&quote(name));
    }
    out.push('\n');
    for (name, row) in class_names.iter().zip(&cm.counts) {
        out.push_str(&quote(name));
        for count in row {
            out.push_str(&format!(",{count}"));
        }
        out.push('\n');
    }
    out
}

/// Each head's attention weights `[heads, T, T]` over a text as heat-maps side by side: queries
/// down the left, keys along the top, both labelled with the text's characters (a space shown
/// as `␣`, a newline as `⏎`), white for 0 to dark blue for the row's largest weight of 1.
pub fn attention_maps(weights: &Tensor, text: &[char], title: &str) -> Result<Image> {
    let &[heads, t, t2] = weights.shape() else {
        return Err(Error::shape("viz", format!("attention weights must be [heads, T, T], got {:?}", weights.shape())));
    };
    if t != t2 || t != text.len() || heads == 0 || t == 0 {
        return Err(Error::shape(
            "viz",
            format!("attention weights {:?} for a text of {} characters", weights.shape(), text.len()),
        ));
    }
    let w = weights.to_vec::<f64>()?;
    let cell = (480 / t).clamp(6, 22) as i32;
    let font = (cell - 2).clamp(6, 14) as u32;
    let side = cell * t as i32;
    let (margin, gap, top) = (18, 24, 56);
    let columns = heads.min(4);
    let rows = heads.div_ceil(columns);
    let panel = margin + side + gap;
    let (width, height) = (columns * panel as usize + 10, top as usize + rows * (side + margin + 30) as usize);
    let shown = |c: char| match c {
        ' ' => "␣".to_string(),
        '\n' => "⏎".to_string(),
        c => c.to_string(),
    };
    canvas(width, height, |root| {
        let text_style =
            |size: u32| TextStyle::from((FONT, size).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
        root.draw(&Text::new(title.to_string(), (8, 12), TextStyle::from((FONT, 18).into_font())))
            .map_err(draw_error)?;
        for h in 0..heads {
            let (x0, y0) =
                (10 + (h % columns) as i32 * panel + margin, top + (h / columns) as i32 * (side + margin + 30));
            root.draw(&Text::new(format!("head {h}"), (x0 + side / 2, y0 - 24), text_style(13))).map_err(draw_error)?;
            for i in 0..t {
                for j in 0..t {
                    let (x, y) = (x0 + j as i32 * cell, y0 + i as i32 * cell);
                    let colour = blue(w[(h * t + i) * t + j]);
                    root.draw(&Rectangle::new([(x, y), (x + cell - 1, y + cell - 1)], colour.filled()))
                        .map_err(draw_error)?;
                }
                let label = shown(text[i]);
                root.draw(&Text::new(
                    label.clone(),
                    (x0 - margin / 2, y0 + i as i32 * cell + cell / 2),
                    text_style(font),
                ))
                .map_err(draw_error)?;
                root.draw(&Text::new(label, (x0 + i as i32 * cell + cell / 2, y0 - 8), text_style(font)))
                    .map_err(draw_error)?;
            }
        }
        Ok(())
    })
}

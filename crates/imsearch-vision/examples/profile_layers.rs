//! Per-layer timing of MobileNetV2-shaped layers at batch 32 with random weights: where the
//! time of a forward pass goes (stem, 1x1 convolutions, depthwise convolutions).
//!
//! ```text
//! cargo run --release -p imsearch-vision --example profile_layers -- [BATCH]
//! ```

use std::time::Instant;

use candle::{Device, Tensor};
use imsearch_vision::{DenseConv2d, DepthwiseConv2d, PointwiseConv2d};

fn rand(shape: &[usize]) -> candle::Result<Tensor> {
    Tensor::randn(0f32, 1f32, shape, &Device::Cpu)
}

fn time<F: FnMut() -> candle::Result<Tensor>>(reps: usize, mut f: F) -> candle::Result<f64> {
    f()?;
    let t = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() / reps as f64)
}

fn main() -> candle::Result<()> {
    let b: usize = std::env::args().nth(1).map_or(32, |s| s.parse().unwrap_or(32));
    // (c_in, t, c_out, stride, input side) of MobileNetV2's blocks.
    let blocks = [
        (32, 1, 16, 1, 112),
        (16, 6, 24, 2, 112),
        (24, 6, 24, 1, 56),
        (24, 6, 32, 2, 56),
        (32, 6, 32, 1, 28),
        (32, 6, 32, 1, 28),
        (32, 6, 64, 2, 28),
        (64, 6, 64, 1, 14),
        (64, 6, 64, 1, 14),
        (64, 6, 64, 1, 14),
        (64, 6, 96, 1, 14),
        (96, 6, 96, 1, 14),
        (96, 6, 96, 1, 14),
        (96, 6, 160, 2, 14),
        (160, 6, 160, 1, 7),
        (160, 6, 160, 1, 7),
        (160, 6, 320, 1, 7),
    ];
    let reps = 10;
    let (mut t_exp, mut t_dw, mut t_proj) = (0.0, 0.0, 0.0);
    let x = rand(&[b, 3, 224, 224])?;
    let w = PointwiseConv2d::pack(&rand(&[32, 3, 3, 3])?, &rand(&[32])?)?;
    let stem = DenseConv2d { kernel: 3, stride: 2, padding: [1, 1, 1, 1], relu6: true };
    let t_stem = time(reps, || stem.forward(&x, &w))?;
    println!("stem 3->32 s2: {:.1} ms", t_stem * 1e3);
    for (i, (c_in, t, c_out, s, side)) in blocks.into_iter().enumerate() {
        let hid = c_in * t;
        let x = rand(&[b, c_in, side, side])?;
        let relu = PointwiseConv2d { relu6: true };
        let lin = PointwiseConv2d { relu6: false };
        let te = if t != 1 {
            let p = PointwiseConv2d::pack(&rand(&[hid, c_in])?, &rand(&[hid])?)?;
            time(reps, || relu.forward(&x, &p, None))?
        } else {
            0.0
        };
        let h = rand(&[b, hid, side, side])?;
        let dw = DepthwiseConv2d { stride: s, padding: [1, 1, 1, 1], relu6: true };
        let (wk, bias) = (rand(&[hid, 1, 3, 3])?, rand(&[hid])?);
        let td = time(reps, || dw.forward(&h, &wk, &bias))?;
        let so = side / s;
        let y = rand(&[b, hid, so, so])?;
        let p = PointwiseConv2d::pack(&rand(&[c_out, hid])?, &rand(&[c_out])?)?;
        let tp = time(reps, || lin.forward(&y, &p, None))?;
        println!(
            "block {:2} {c_in:3}->{hid:4}->{c_out:3} @{side:3} s{s}: expand {:6.1} ms, dw {:6.1} ms, project {:6.1} ms",
            i + 1,
            te * 1e3,
            td * 1e3,
            tp * 1e3
        );
        (t_exp, t_dw, t_proj) = (t_exp + te, t_dw + td, t_proj + tp);
    }
    let x = rand(&[b, 320, 7, 7])?;
    let p = PointwiseConv2d::pack(&rand(&[1280, 320])?, &rand(&[1280])?)?;
    let t_head = time(reps, || PointwiseConv2d { relu6: true }.forward(&x, &p, None))?;
    let total = t_stem + t_exp + t_dw + t_proj + t_head;
    println!(
        "total {:.1} ms ({:.1} images/s): stem {:.1}, expand {:.1}, depthwise {:.1}, project {:.1}, head {:.1} ms",
        total * 1e3,
        b as f64 / total,
        t_stem * 1e3,
        t_exp * 1e3,
        t_dw * 1e3,
        t_proj * 1e3,
        t_head * 1e3
    );
    Ok(())
}

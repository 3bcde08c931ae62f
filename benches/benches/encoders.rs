//! Encoder throughput: preprocessing, each image encoder at batch 1 and 32, MiniLM at batch 1
//! and 64. Needs the weights (`cargo xtask fetch-models`) and the dataset.

use candle::Device;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use imsearch_benches::{model, test_queries, train_images};
use imsearch_vision::{EncoderKind, View};

fn preprocess(c: &mut Criterion) {
    let paths = train_images(32);
    let cfg = EncoderKind::MobileNetV2.preprocess();
    let mut g = c.benchmark_group("vision/preprocess");
    g.sample_size(10);
    g.throughput(Throughput::Elements(paths.len() as u64));
    g.bench_function("decode_resize_crop_normalise_32", |b| {
        b.iter(|| cfg.load_batch(&paths, &[View::Center], &Device::Cpu).expect("decodes"))
    });
    g.finish();
}

fn image_encoders(c: &mut Criterion) {
    let paths = train_images(32);
    for kind in [EncoderKind::MobileNetV2, EncoderKind::EfficientNetLite0] {
        let files = model(kind.id());
        let encoder = imsearch_vision::load(kind, &files.weights, &Device::Cpu).expect("loads");
        let batch = encoder.preprocess().load_batch(&paths, &[View::Center], &Device::Cpu).expect("decodes");
        let mut g = c.benchmark_group(format!("vision/{}", kind.id()));
        g.sample_size(10);
        for n in [1, 32] {
            let xs = batch.narrow(0, 0, n).expect("a batch");
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function(format!("features_batch_{n}"), |b| b.iter(|| encoder.features(&xs).expect("runs")));
        }
        g.finish();
    }
}

fn minilm(c: &mut Criterion) {
    let files = model(imsearch_models::MINILM_L6_V2);
    let model = imsearch_text::MiniLm::load(&files.dir, &Device::Cpu).expect("loads");
    let texts = test_queries();
    let mut g = c.benchmark_group("text/minilm");
    g.sample_size(10);
    for n in [1, 64] {
        let batch: Vec<&str> = texts.iter().take(n).map(String::as_str).collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("encode_batch_{n}"), |b| b.iter(|| model.encode(&batch).expect("encodes")));
    }
    g.finish();
}

criterion_group!(benches, preprocess, image_encoders, minilm);
criterion_main!(benches);

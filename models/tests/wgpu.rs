//! Device selection and the wgpu path: on a software adapter (lavapipe) a few training steps give
//! the same losses as `flex`.
//!
//! Everything that touches wgpu runs in this one test, sequentially: Vulkan loaders dislike
//! instances created concurrently. Without a wgpu adapter the comparison is skipped with a notice,
//! unless `MURMUR_REQUIRE_WGPU=1`, in which case it fails (CI sets it).

mod common;

use burn::tensor::Device;
use murmur_models::{
    DeviceChoice, DeviceClass, ModelKind, Trainer, builtin_data, select_device, spec_for,
};

fn losses(kind: ModelKind, device: &Device, steps: usize) -> (Vec<f32>, f32) {
    let data = builtin_data(kind).unwrap();
    let spec = match kind {
        ModelKind::MlpDigits => spec_for(kind, data.train.shape()).unwrap(),
        _ => murmur_models::ModelSpec::Gpt(murmur_models::GptConfig {
            vocab: 66,
            context: 64,
            d_model: 32,
            heads: 2,
            layers: 1,
        }),
    };
    let mut cfg = common::config(8, 50, 3e-3);
    cfg.eval_samples = 16;
    let mut t = Trainer::new(&spec, data.train, data.test, cfg, device).unwrap();
    let l = (0..steps).map(|_| t.step().unwrap().loss).collect();
    (l, t.evaluate().unwrap().loss)
}

#[test]
fn device_choices_and_wgpu_matches_flex() {
    assert_eq!(
        "wgpu-cpu".parse::<DeviceChoice>().unwrap(),
        DeviceChoice::WgpuCpu
    );
    assert_eq!("AUTO".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
    assert!("tpu".parse::<DeviceChoice>().is_err());
    let flex = select_device(DeviceChoice::Flex).unwrap();
    assert_eq!(flex.info.kind, DeviceClass::Flex);
    let auto = select_device(DeviceChoice::Auto).unwrap();
    println!("auto selected: {auto}");
    assert_ne!(
        auto.info.kind,
        DeviceClass::Cpu,
        "auto must never pick a software adapter"
    );
    match select_device(DeviceChoice::Gpu) {
        Ok(gpu) => println!("gpu: {gpu}"),
        Err(err) => println!("gpu: {err}"),
    }

    let wgpu = match select_device(DeviceChoice::WgpuCpu) {
        Ok(selected) => selected,
        Err(err) => {
            if std::env::var("MURMUR_REQUIRE_WGPU").as_deref() == Ok("1") {
                panic!("MURMUR_REQUIRE_WGPU=1 but no wgpu software adapter: {err}");
            }
            println!("NOTICE: skipping the wgpu-vs-flex comparison: {err}");
            return;
        }
    };
    println!("wgpu-cpu selected: {wgpu}");
    assert_eq!(wgpu.info.kind, DeviceClass::Cpu);
    for kind in [ModelKind::MlpDigits, ModelKind::CharGpt] {
        let (on_flex, eval_flex) = losses(kind, &flex.device, 4);
        let (on_wgpu, eval_wgpu) = losses(kind, &wgpu.device, 4);
        println!("{kind}: flex {on_flex:?} {eval_flex}, wgpu {on_wgpu:?} {eval_wgpu}");
        for (a, b) in on_flex.iter().zip(&on_wgpu) {
            assert!(
                (a - b).abs() < 1e-3 * a.abs().max(1.0),
                "{kind}: flex {on_flex:?} vs wgpu {on_wgpu:?}"
            );
        }
        assert!((eval_flex - eval_wgpu).abs() < 1e-3 * eval_flex.max(1.0));
    }
}

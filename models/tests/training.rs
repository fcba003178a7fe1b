//! Convergence tests on the built-in data, on `flex`.

mod common;

use murmur_models::data::{DataShape, Source};
use murmur_models::{ModelKind, Trainer, builtin_data, spec_for};

#[test]
fn mlp_digits_reaches_96_percent_test_accuracy() {
    let data = builtin_data(ModelKind::MlpDigits).unwrap();
    let spec = spec_for(ModelKind::MlpDigits, data.train.shape()).unwrap();
    let mut cfg = common::config(32, 900, 3e-3);
    cfg.weight_decay = 1e-4;
    let mut trainer = Trainer::new(&spec, data.train, data.test, cfg, &common::flex()).unwrap();
    let first = trainer.step().unwrap().loss;
    for _ in 1..900 {
        trainer.step().unwrap();
    }
    let eval = trainer.evaluate().unwrap();
    println!("mlp-digits: first loss {first:.3}, test {eval:?}");
    assert_eq!(eval.samples, 360);
    assert!(
        eval.accuracy.unwrap() >= 0.96,
        "accuracy {:?}",
        eval.accuracy
    );
    assert_eq!(trainer.samples_seen(), 900 * 32);
}

/// Entropy (nats) of the character distribution of the training text.
fn unigram_entropy(data: &murmur_models::Dataset) -> f32 {
    let Source::Text { tokens, vocab, .. } = data.source() else {
        panic!("text data expected")
    };
    let mut counts = vec![0usize; vocab.len()];
    for &t in tokens {
        counts[t as usize] += 1;
    }
    let n = tokens.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| -(c as f64 / n) * (c as f64 / n).ln())
        .sum::<f64>() as f32
}

#[test]
fn char_gpt_held_out_loss_falls_well_below_unigram_entropy() {
    let data = builtin_data(ModelKind::CharGpt).unwrap();
    assert!(matches!(
        data.train.shape(),
        DataShape::Text {
            vocab: 66,
            context: 64
        }
    ));
    let entropy = unigram_entropy(&data.train);
    let spec = spec_for(ModelKind::CharGpt, data.train.shape()).unwrap();
    let steps = 150;
    let mut cfg = common::config(16, steps, 3e-3);
    cfg.eval_samples = 64;
    let mut trainer = Trainer::new(&spec, data.train, data.test, cfg, &common::flex()).unwrap();
    let before = trainer.evaluate().unwrap();
    for _ in 0..steps {
        trainer.step().unwrap();
    }
    let after = trainer.evaluate().unwrap();
    println!("char-gpt: unigram entropy {entropy:.3}, held-out before {before:?}, after {after:?}");
    assert!(
        before.loss > entropy,
        "an untrained model should not beat the unigram entropy"
    );
    assert!(
        after.loss < entropy - 0.4,
        "held-out loss {} vs unigram entropy {entropy}",
        after.loss
    );
    assert!(after.perplexity.is_some() && after.accuracy.is_none());
}

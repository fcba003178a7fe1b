//! The `char-gpt` stages: token + position embedding, pre-norm causal transformer blocks, and the
//! final norm + language-model head.
//!
//! Shapes: tokens `[b, t]`, hidden `[b, t, d]`, attention scores `[b, heads, t, t]`, logits
//! `[b, t, vocab]`.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::{StageError, check_width};

/// Token and learned position embeddings, summed.
#[derive(Module, Debug)]
pub struct EmbedStage {
    /// `[vocab, d]`.
    pub token: Embedding,
    /// `[context, d]`.
    pub position: Embedding,
}

impl EmbedStage {
    /// Embedding tables for `vocab` tokens and `context` positions of width `d`.
    pub fn new(vocab: usize, context: usize, d: usize, device: &Device) -> Self {
        Self {
            token: EmbeddingConfig::new(vocab, d).init(device),
            position: EmbeddingConfig::new(context, d).init(device),
        }
    }

    /// `[b, t] → [b, t, d]`.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Result<Tensor<3>, StageError> {
        let [_, t] = tokens.dims();
        let [context, _] = self.position.weight.shape().dims();
        if t > context {
            return Err(StageError::BadTokens(format!(
                "sequence of {t} tokens exceeds the context of {context}"
            )));
        }
        let pos = self
            .position
            .weight
            .val()
            .narrow(0, 0, t)
            .unsqueeze_dim::<3>(0);
        Ok(self.token.forward(tokens) + pos)
    }
}

/// A pre-norm transformer block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Module, Debug)]
pub struct Block {
    /// Norm before attention.
    pub ln1: LayerNorm,
    /// Query/key/value projection `d → 3d`.
    pub qkv: Linear,
    /// Attention output projection `d → d`.
    pub proj: Linear,
    /// Norm before the MLP.
    pub ln2: LayerNorm,
    /// MLP expansion `d → 4d`.
    pub fc: Linear,
    /// MLP contraction `4d → d`.
    pub out: Linear,
    /// Number of attention heads.
    #[module(skip)]
    pub heads: usize,
}

impl Block {
    /// A block of width `d` with `heads` heads (`d % heads == 0`, checked by the spec).
    pub fn new(d: usize, heads: usize, device: &Device) -> Self {
        Self {
            ln1: LayerNormConfig::new(d).init(device),
            qkv: LinearConfig::new(d, 3 * d).init(device),
            proj: LinearConfig::new(d, d).init(device),
            ln2: LayerNormConfig::new(d).init(device),
            fc: LinearConfig::new(d, 4 * d).init(device),
            out: LinearConfig::new(4 * d, d).init(device),
            heads,
        }
    }

    /// `[b, t, d] → [b, t, d]`.
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>, StageError> {
        let [d, _] = self.proj.weight.shape().dims();
        check_width("block", &x, d)?;
        let x = x.clone() + self.attention(self.ln1.forward(x));
        let h = self
            .out
            .forward(gelu(self.fc.forward(self.ln2.forward(x.clone()))));
        Ok(x + h)
    }

    fn attention(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let heads = self.heads.max(1);
        let dh = d / heads;
        let device = x.device();
        let qkv = self.qkv.forward(x);
        let split = |part: usize| {
            qkv.clone()
                .narrow(2, part * d, d)
                .reshape([b, t, heads, dh])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let scale = 1.0 / (dh as f64).sqrt();
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
        let scores = scores + causal_mask(t, &device).unsqueeze::<4>();
        let y = softmax(scores, 3).matmul(v);
        self.proj.forward(y.swap_dims(1, 2).reshape([b, t, d]))
    }
}

/// `[t, t]` with 0 on and below the diagonal and a large negative number above it.
fn causal_mask(t: usize, device: &Device) -> Tensor<2> {
    let mut values = vec![0.0f32; t * t];
    for i in 0..t {
        for j in (i + 1)..t {
            values[i * t + j] = -1.0e9;
        }
    }
    Tensor::from_data(TensorData::new(values, [t, t]), device)
}

/// Final layer norm and the projection to vocabulary logits.
#[derive(Module, Debug)]
pub struct HeadStage {
    /// Final norm.
    pub norm: LayerNorm,
    /// `d → vocab`.
    pub lm: Linear,
}

impl HeadStage {
    /// A head of width `d` over `vocab` tokens.
    pub fn new(d: usize, vocab: usize, device: &Device) -> Self {
        Self {
            norm: LayerNormConfig::new(d).init(device),
            lm: LinearConfig::new(d, vocab).init(device),
        }
    }

    /// `[b, t, d] → [b, t, vocab]`.
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>, StageError> {
        let [d, _] = self.lm.weight.shape().dims();
        check_width("head", &x, d)?;
        Ok(self.lm.forward(self.norm.forward(x)))
    }
}

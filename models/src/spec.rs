//! Which model to build: [`ModelKind`] (what the operator names) and [`ModelSpec`] (the exact
//! architecture, sized from the data), plus per-stage cost estimates for a pipeline planner.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::network::{Block, DenseStage, EmbedStage, HeadStage, Network, Stage};

/// A named model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ModelKind {
    /// 64-128-128-10 MLP with ReLU for the digits data.
    MlpDigits,
    /// Small character GPT ([`GptConfig::small`]).
    CharGpt,
    /// Character GPT with ≥ 25 M parameters ([`GptConfig::large`]), for benchmarks.
    CharGptLarge,
    /// Narrow, deep character GPT ([`GptConfig::deep`]): 14 stages, for pipeline sharding.
    CharGptDeep,
}

/// The model name was not recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Unknown `--model` name.
    #[error("unknown model {0:?}; expected mlp-digits, char-gpt, char-gpt-deep or char-gpt-large")]
    UnknownModel(String),
    /// A configuration that cannot be built.
    #[error("invalid model configuration: {0}")]
    Invalid(String),
}

impl FromStr for ModelKind {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mlp-digits" => Ok(Self::MlpDigits),
            "char-gpt" => Ok(Self::CharGpt),
            "char-gpt-large" => Ok(Self::CharGptLarge),
            "char-gpt-deep" => Ok(Self::CharGptDeep),
            other => Err(SpecError::UnknownModel(other.to_string())),
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MlpDigits => "mlp-digits",
            Self::CharGpt => "char-gpt",
            Self::CharGptLarge => "char-gpt-large",
            Self::CharGptDeep => "char-gpt-deep",
        })
    }
}

impl ModelKind {
    /// The architecture of this kind for `vocab` tokens (ignored by `mlp-digits`).
    pub fn spec(self, vocab: usize) -> ModelSpec {
        match self {
            Self::MlpDigits => ModelSpec::Mlp(MlpConfig::digits()),
            Self::CharGpt => ModelSpec::Gpt(GptConfig::small(vocab)),
            Self::CharGptLarge => ModelSpec::Gpt(GptConfig::large(vocab)),
            Self::CharGptDeep => ModelSpec::Gpt(GptConfig::deep(vocab)),
        }
    }
}

/// An MLP: layer widths, input first (`[64, 128, 128, 10]` for digits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Widths of input, hidden layers and output.
    pub widths: Vec<usize>,
}

impl MlpConfig {
    /// 64-128-128-10.
    pub fn digits() -> Self {
        Self {
            widths: vec![64, 128, 128, 10],
        }
    }
}

/// A character GPT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptConfig {
    /// Vocabulary size.
    pub vocab: usize,
    /// Maximum sequence length.
    pub context: usize,
    /// Residual width.
    pub d_model: usize,
    /// Attention heads (divides `d_model`).
    pub heads: usize,
    /// Transformer blocks.
    pub layers: usize,
}

impl GptConfig {
    /// The default: d 64, 4 heads, 2 layers, context 64 (≈ 0.11 M parameters); trains visibly on
    /// two CPU cores within a minute.
    pub fn small(vocab: usize) -> Self {
        Self {
            vocab,
            context: 64,
            d_model: 64,
            heads: 4,
            layers: 2,
        }
    }

    /// The pipeline preset: the small model's width with 12 blocks (≈ 0.6 M parameters, 14
    /// stages), so layer ranges can be sized to peers' capacities at a fine grain.
    pub fn deep(vocab: usize) -> Self {
        Self {
            layers: 12,
            ..Self::small(vocab)
        }
    }

    /// The benchmark preset: d 512, 8 heads, 8 layers, context 256 (≈ 25.4 M parameters with
    /// the 66-character Shakespeare vocabulary).
    pub fn large(vocab: usize) -> Self {
        Self {
            vocab,
            context: 256,
            d_model: 512,
            heads: 8,
            layers: 8,
        }
    }
}

/// An exact architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelSpec {
    /// A multi-layer perceptron over feature vectors.
    Mlp(MlpConfig),
    /// A character-level causal transformer.
    Gpt(GptConfig),
}

/// FLOP-equivalents charged per element of a memory-bound pass (see
/// [`ModelSpec::stage_costs`]). Such a pass reads and writes memory for one or two arithmetic
/// operations, and burn allocates its output (and, under autodiff, keeps it for the backward);
/// at the widths Murmur trains on CPUs one element of it costs about as much as this many
/// FLOPs of a matmul. Calibrated with `cargo bench -p murmur-models --bench stage_costs`:
/// with it, each stage kind of `char-gpt-deep` (embedding aside, which is too small to time)
/// takes within about 12 % of its modelled share of the model.
pub const ELEMENT_PASS_FLOPS: u64 = 11;

/// What one stage costs, for a pipeline planner. FLOPs count forward and backward (3× the
/// forward's matmul FLOPs plus [`ELEMENT_PASS_FLOPS`] per element of its memory-bound passes);
/// activation bytes are the stage's output per sample in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCost {
    /// Parameter count.
    pub params: u64,
    /// Forward + backward floating-point operations per sample.
    pub flops_per_sample: u64,
    /// Bytes of output activation per sample (what crosses to the next stage).
    pub activation_bytes_per_sample: u64,
    /// Bytes of parameters (f32).
    pub param_bytes: u64,
}

impl ModelSpec {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), SpecError> {
        match self {
            Self::Mlp(c) if c.widths.len() < 2 || c.widths.contains(&0) => Err(SpecError::Invalid(
                "an MLP needs at least two non-zero widths".into(),
            )),
            Self::Gpt(c) if c.vocab == 0 || c.context == 0 || c.layers == 0 => Err(
                SpecError::Invalid("vocab, context and layers must be non-zero".into()),
            ),
            Self::Gpt(c) if c.heads == 0 || c.d_model % c.heads != 0 => {
                Err(SpecError::Invalid(format!(
                    "d_model {} is not divisible by {} heads",
                    c.d_model, c.heads
                )))
            }
            _ => Ok(()),
        }
    }

    /// Number of stages.
    pub fn num_stages(&self) -> usize {
        match self {
            Self::Mlp(c) => c.widths.len() - 1,
            Self::Gpt(c) => c.layers + 2,
        }
    }

    /// Builds the stages on `device` with burn's default initialisation; [`crate::Model::new`]
    /// then overwrites every parameter deterministically from a seed.
    pub(crate) fn build_network(&self, device: &Device) -> Result<Network, SpecError> {
        self.validate()?;
        let stages = match self {
            Self::Mlp(c) => {
                let n = c.widths.len() - 1;
                c.widths
                    .windows(2)
                    .enumerate()
                    .map(|(i, w)| Stage::Dense(DenseStage::new(w[0], w[1], i + 1 < n, device)))
                    .collect()
            }
            Self::Gpt(c) => {
                let mut stages = vec![Stage::Embed(EmbedStage::new(
                    c.vocab, c.context, c.d_model, device,
                ))];
                stages.extend(
                    (0..c.layers).map(|_| Stage::Block(Block::new(c.d_model, c.heads, device))),
                );
                stages.push(Stage::Head(HeadStage::new(c.d_model, c.vocab, device)));
                stages
            }
        };
        Ok(Network { stages })
    }

    /// Cost estimate of every stage, in order.
    ///
    /// A stage's compute is its matmul FLOPs plus [`ELEMENT_PASS_FLOPS`] per element of each
    /// memory-bound pass it makes (normalisations, softmax, activations, bias and residual adds,
    /// layout copies), all times 3 for forward and backward. Counting only matmul FLOPs made
    /// the head 40 % cheaper than it measures (`stage_costs` bench), and a block's attention
    /// 25 % cheaper than its MLP though the two take the same time (timed apart), which
    /// misplaces stages on slow peers: a slowdown multiplies the error.
    pub fn stage_costs(&self) -> Vec<StageCost> {
        let cost = |params: u64, matmul: u64, element_passes: u64, act: u64| StageCost {
            params,
            flops_per_sample: 3 * (matmul + ELEMENT_PASS_FLOPS * element_passes),
            activation_bytes_per_sample: 4 * act,
            param_bytes: 4 * params,
        };
        match self {
            Self::Mlp(c) => c
                .widths
                .windows(2)
                .map(|w| {
                    let (i, o) = (w[0] as u64, w[1] as u64);
                    // Bias add and ReLU.
                    cost(i * o + o, 2 * i * o, 2 * o, o)
                })
                .collect(),
            Self::Gpt(c) => {
                let (v, t, d) = (c.vocab as u64, c.context as u64, c.d_model as u64);
                let h = c.heads as u64;
                // A layer norm makes about 5 passes over its input (mean, variance, centre,
                // scale, affine).
                let norm = 5 * t * d;
                // Token gather and position add.
                let mut out = vec![cost((v + t) * d, 0, 2 * t * d, t * d)];
                // Attention: norm; qkv and output projections, then scores and their weighted
                // sum (2·t·d each per token). Passes: norm, qkv bias, the q/k/v and output
                // head layout copies, output bias, residual; over the h·t·t scores: scale,
                // causal mask, softmax (max, exp, sum, divide) and the matmul's own output.
                let attention = cost(
                    4 * d * d + 6 * d,
                    t * (8 * d * d + 4 * t * d),
                    norm + 9 * t * d + 7 * h * t * t,
                    t * d,
                );
                // MLP: norm, d → 4d → d. Passes: norm, the 4d bias, GELU (two: erf, product),
                // output bias, residual.
                let mlp = cost(
                    8 * d * d + 7 * d,
                    t * 16 * d * d,
                    norm + 12 * t * d + 2 * t * d,
                    t * d,
                );
                let block = StageCost {
                    params: attention.params + mlp.params,
                    flops_per_sample: attention.flops_per_sample + mlp.flops_per_sample,
                    activation_bytes_per_sample: mlp.activation_bytes_per_sample,
                    param_bytes: attention.param_bytes + mlp.param_bytes,
                };
                out.extend((0..c.layers).map(|_| block));
                // Head: norm, d → vocab; passes over the logits: bias, log-softmax (max, shift,
                // exp, sum, log, subtract) and the loss's gather, whose backward fills a
                // logits-sized gradient.
                out.push(cost(
                    d * v + v + 2 * d,
                    2 * t * d * v,
                    norm + 8 * t * v,
                    t * v,
                ));
                out
            }
        }
    }

    /// Total parameter count (from the cost table).
    pub fn param_count(&self) -> u64 {
        self.stage_costs().iter().map(|c| c.params).sum()
    }
}

//! Models as ordered lists of stages.
//!
//! A [`Network`] is a `Vec<Stage>`; each [`Stage`] maps one [`Activation`] to the next. Any
//! contiguous range of stages runs on its own (see [`crate::model`]), which is what pipeline
//! sharding builds on. Shapes: token ids `[batch, time]`, hidden activations `[batch, time, width]`
//! (the MLP uses `time = 1`), logits `[batch, time, classes]`.

mod gpt;
mod mlp;

use burn::module::Module;
use burn::tensor::{Int, Tensor};

pub use gpt::{Block, EmbedStage, HeadStage};
pub use mlp::DenseStage;

/// Activations flowing between stages, on a device.
#[derive(Debug, Clone)]
pub enum Activation {
    /// Token ids `[batch, time]`: the input of a `char-gpt` embedding stage.
    Tokens(Tensor<2, Int>),
    /// Hidden states or logits `[batch, time, width]`.
    Hidden(Tensor<3>),
}

impl Activation {
    /// The hidden tensor, or an error naming the stage that wanted it.
    pub fn into_hidden(self, stage: &'static str) -> Result<Tensor<3>, StageError> {
        match self {
            Self::Hidden(t) => Ok(t),
            Self::Tokens(_) => Err(StageError::WrongInput {
                stage,
                expected: "hidden activations",
            }),
        }
    }

    /// Shape as a vector (`[batch, time]` or `[batch, time, width]`).
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Self::Tokens(t) => t.dims().to_vec(),
            Self::Hidden(t) => t.dims().to_vec(),
        }
    }
}

/// A stage got an input it cannot take, or a range was invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    /// Token ids where hidden states were expected, or the reverse.
    #[error("stage {stage} expects {expected}")]
    WrongInput {
        /// The stage kind.
        stage: &'static str,
        /// What it takes.
        expected: &'static str,
    },
    /// Input width differs from what the stage was built for.
    #[error("stage {stage} expects width {expected}, got shape {got:?}")]
    WrongShape {
        /// The stage kind.
        stage: &'static str,
        /// Expected last dimension.
        expected: usize,
        /// The shape received.
        got: Vec<usize>,
    },
    /// Empty or out-of-bounds stage range.
    #[error("stage range {start}..{end} is invalid for a model of {len} stages")]
    BadRange {
        /// Range start.
        start: usize,
        /// Range end.
        end: usize,
        /// Number of stages.
        len: usize,
    },
    /// A token id outside the vocabulary, or a sequence longer than the context.
    #[error("{0}")]
    BadTokens(String),
}

/// One pipeline stage.
// Stages are built once and live in a `Vec`; boxing the block would only add an indirection
// (and burn's `Module` derive does not see through `Box`).
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Stage {
    /// A fully connected layer (optionally followed by ReLU).
    Dense(DenseStage),
    /// Token + position embedding.
    Embed(EmbedStage),
    /// A pre-norm transformer block.
    Block(Block),
    /// Final norm + language-model head.
    Head(HeadStage),
}

impl Stage {
    /// Runs this stage.
    pub fn forward(&self, input: Activation) -> Result<Activation, StageError> {
        match self {
            Self::Dense(s) => s
                .forward(input.into_hidden("dense")?)
                .map(Activation::Hidden),
            Self::Embed(s) => match input {
                Activation::Tokens(t) => s.forward(t).map(Activation::Hidden),
                Activation::Hidden(_) => Err(StageError::WrongInput {
                    stage: "embed",
                    expected: "token ids",
                }),
            },
            Self::Block(s) => s
                .forward(input.into_hidden("block")?)
                .map(Activation::Hidden),
            Self::Head(s) => s
                .forward(input.into_hidden("head")?)
                .map(Activation::Hidden),
        }
    }

    /// Short kind name (`dense`, `embed`, `block`, `head`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Dense(_) => "dense",
            Self::Embed(_) => "embed",
            Self::Block(_) => "block",
            Self::Head(_) => "head",
        }
    }
}

/// A model: its stages in order.
#[derive(Module, Debug)]
pub struct Network {
    /// The stages, input first.
    pub stages: Vec<Stage>,
}

pub(crate) fn check_width(
    stage: &'static str,
    x: &Tensor<3>,
    expected: usize,
) -> Result<(), StageError> {
    let dims = x.dims();
    if dims[2] == expected {
        Ok(())
    } else {
        Err(StageError::WrongShape {
            stage,
            expected,
            got: dims.to_vec(),
        })
    }
}

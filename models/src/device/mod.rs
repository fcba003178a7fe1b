//! Run-time device selection: `auto | gpu | wgpu-cpu | flex`.
//!
//! burn 0.22 picks its backend from a run-time [`Device`]. `Device::default()` would pick wgpu with
//! no hardware check, so the node chooses explicitly here:
//!
//! * `flex` — burn's pure-Rust CPU backend, always available.
//! * `gpu` — a real wgpu adapter (discrete, integrated or virtual); an error naming the adapters
//!   found when there is none.
//! * `wgpu-cpu` — wgpu on a software adapter (Mesa lavapipe), so the GPU code path can be tested on
//!   machines without a GPU. cubecl-wgpu ignores software adapters unless one is named explicitly
//!   (`DeviceKind::Cpu`), which is what this does.
//! * `auto` — `gpu` when one is found, else `flex`.
//!
//! Adapters are listed once per process through `wgpu` itself (no device is opened for that), in
//! the order cubecl's automatic graphics API follows, so the kind index passed to burn names the
//! same adapter. The chosen device then runs a tiny computation; a failure there is an error,
//! not a panic.

mod probe;

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::str::FromStr;

use burn::tensor::{Device, DeviceKind, Tensor};

use probe::{Adapter, pick};

/// What the operator asked for (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// A real GPU when wgpu finds one, else `flex`.
    #[default]
    Auto,
    /// A real GPU through wgpu, or an error.
    Gpu,
    /// wgpu on a software (CPU) adapter such as Mesa lavapipe.
    WgpuCpu,
    /// burn's `flex` CPU backend.
    Flex,
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "gpu" => Ok(Self::Gpu),
            "wgpu-cpu" => Ok(Self::WgpuCpu),
            "flex" | "cpu" => Ok(Self::Flex),
            other => Err(DeviceError::UnknownChoice(other.to_string())),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Gpu => "gpu",
            Self::WgpuCpu => "wgpu-cpu",
            Self::Flex => "flex",
        })
    }
}

/// What kind of compute device was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceClass {
    /// A discrete GPU.
    Discrete,
    /// A GPU integrated with the CPU.
    Integrated,
    /// A virtual GPU (VM pass-through and the like).
    Virtual,
    /// A software rasterizer running on the CPU (lavapipe, llvmpipe).
    Cpu,
    /// Some other wgpu adapter type.
    Other,
    /// burn's `flex` CPU backend (not wgpu).
    Flex,
}

/// A printable description of the chosen device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Adapter name as the driver reports it, or `flex`.
    pub name: String,
    /// Adapter type.
    pub kind: DeviceClass,
    /// Graphics API (`vulkan`, `metal`, `dx12`, `gl`) or `flex`.
    pub backend: String,
}

/// A device ready for training, with its description.
#[derive(Debug, Clone)]
pub struct SelectedDevice {
    /// The burn device (without autodiff; the trainer adds it).
    pub device: Device,
    /// What it is.
    pub info: DeviceInfo,
}

impl fmt::Display for SelectedDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.info.kind {
            DeviceClass::Discrete => "discrete GPU",
            DeviceClass::Integrated => "integrated GPU",
            DeviceClass::Virtual => "virtual GPU",
            DeviceClass::Cpu => "software adapter",
            DeviceClass::Other => "other adapter",
            DeviceClass::Flex => "CPU",
        };
        write!(f, "{} ({kind}, {})", self.info.name, self.info.backend)
    }
}

/// Why a device could not be selected.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The `--device` string is not one of the known choices.
    #[error("unknown device {0:?}; expected auto, gpu, wgpu-cpu or flex")]
    UnknownChoice(String),
    /// No adapter of the requested kind.
    #[error("no {wanted} adapter found; wgpu adapters seen: {found}")]
    NotFound {
        /// What was asked for.
        wanted: &'static str,
        /// The adapters listed, or `none`.
        found: String,
    },
    /// The adapter was found but a test computation on it failed.
    #[error("device {name} failed its smoke test: {reason}")]
    Broken {
        /// Adapter name.
        name: String,
        /// Panic message or mismatch.
        reason: String,
    },
    /// The adapter ran the test computation but its result could not be read back.
    #[error("device {name} failed its smoke test: its result could not be read back")]
    ReadBack {
        /// Adapter name.
        name: String,
        /// What burn reported.
        #[source]
        source: burn::tensor::DataError,
    },
}

/// Chooses and checks a device.
pub fn select_device(choice: DeviceChoice) -> Result<SelectedDevice, DeviceError> {
    let selected = match choice {
        DeviceChoice::Flex => return Ok(flex()),
        DeviceChoice::Auto => match pick(false) {
            Ok(adapter) => wgpu_device(adapter),
            Err(err) => {
                tracing::info!(%err, "no GPU adapter; using flex");
                return Ok(flex());
            }
        },
        DeviceChoice::Gpu => wgpu_device(pick(false)?),
        DeviceChoice::WgpuCpu => wgpu_device(pick(true)?),
    };
    smoke_test(&selected)?;
    tracing::info!(device = %selected, "selected device");
    Ok(selected)
}

fn flex() -> SelectedDevice {
    SelectedDevice {
        device: Device::flex(),
        info: DeviceInfo {
            name: "flex".into(),
            kind: DeviceClass::Flex,
            backend: "flex".into(),
        },
    }
}

fn wgpu_device(adapter: Adapter) -> SelectedDevice {
    let kind = match adapter.class {
        DeviceClass::Discrete => DeviceKind::DiscreteGpu(adapter.index),
        DeviceClass::Integrated => DeviceKind::IntegratedGpu(adapter.index),
        DeviceClass::Virtual => DeviceKind::VirtualGpu(adapter.index),
        DeviceClass::Cpu => DeviceKind::Cpu,
        DeviceClass::Other | DeviceClass::Flex => DeviceKind::DefaultDevice,
    };
    SelectedDevice {
        device: Device::wgpu(kind),
        info: DeviceInfo {
            name: adapter.name,
            kind: adapter.class,
            backend: adapter.backend,
        },
    }
}

/// Runs `2 * [1, 2, 3]` summed on the device; anything but 12 (or a panic) is an error.
fn smoke_test(selected: &SelectedDevice) -> Result<(), DeviceError> {
    let device = selected.device.clone();
    let outcome = catch_unwind(AssertUnwindSafe(move || {
        let t = Tensor::<1>::from_floats([1.0f32, 2.0, 3.0], &device);
        t.mul_scalar(2.0).sum().into_data().try_to_vec::<f32>()
    }));
    let reason = match outcome {
        Ok(Ok(v)) if v.first().is_some_and(|x| (x - 12.0).abs() < 1e-4) => return Ok(()),
        Ok(Ok(v)) => format!("2*[1,2,3] summed to {v:?}"),
        Ok(Err(source)) => {
            return Err(DeviceError::ReadBack {
                name: selected.info.name.clone(),
                source,
            });
        }
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
            .unwrap_or_else(|| "panicked".into()),
    };
    Err(DeviceError::Broken {
        name: selected.info.name.clone(),
        reason,
    })
}

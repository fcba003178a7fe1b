//! Listing wgpu adapters (name, type, graphics API) without opening a device, in the order
//! cubecl's automatic graphics-API choice follows.

use std::sync::OnceLock;

use super::{DeviceClass, DeviceError};

/// One wgpu adapter as listed by [`adapters`].
#[derive(Debug, Clone)]
pub(super) struct Adapter {
    pub(super) name: String,
    pub(super) class: DeviceClass,
    pub(super) backend: String,
    /// Index among adapters of the same class on that API, as cubecl counts them.
    pub(super) index: usize,
}

/// The best adapter: a software one when `software`, else the best real GPU.
pub(super) fn pick(software: bool) -> Result<Adapter, DeviceError> {
    let all = adapters();
    let rank = |class: DeviceClass| match class {
        DeviceClass::Discrete => 0,
        DeviceClass::Integrated => 1,
        DeviceClass::Virtual => 2,
        DeviceClass::Other => 3,
        DeviceClass::Cpu | DeviceClass::Flex => 9,
    };
    let found = if software {
        all.iter().find(|a| a.class == DeviceClass::Cpu)
    } else {
        all.iter()
            .filter(|a| rank(a.class) < 9)
            .min_by_key(|a| rank(a.class))
    };
    found.cloned().ok_or_else(|| DeviceError::NotFound {
        wanted: if software { "software (CPU)" } else { "GPU" },
        found: describe(all),
    })
}

fn describe(all: &[Adapter]) -> String {
    if all.is_empty() {
        return "none (is a Vulkan/Metal/DX12 driver installed?)".into();
    }
    all.iter()
        .map(|a| format!("{} [{:?}, {}]", a.name, a.class, a.backend))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Adapters on the graphics API cubecl's automatic choice settles on: the first of its chain with
/// a real GPU, else the first with anything. Listed once per process (creating Vulkan instances
/// concurrently with cubecl's own is unsafe in some loaders).
fn adapters() -> &'static [Adapter] {
    static ADAPTERS: OnceLock<Vec<Adapter>> = OnceLock::new();
    ADAPTERS.get_or_init(|| {
        let chain: &[wgpu::Backend] = if cfg!(target_os = "macos") {
            &[wgpu::Backend::Metal]
        } else {
            &[
                wgpu::Backend::Vulkan,
                wgpu::Backend::Dx12,
                wgpu::Backend::Gl,
            ]
        };
        let mut software_only = None;
        for &api in chain {
            if !wgpu::Instance::enabled_backend_features().contains(api.into()) {
                continue;
            }
            let listed = probe(api);
            if listed.iter().any(|a| a.class != DeviceClass::Cpu) {
                return listed;
            }
            if software_only.is_none() && !listed.is_empty() {
                software_only = Some(listed);
            }
        }
        software_only.unwrap_or_default()
    })
}

fn probe(api: wgpu::Backend) -> Vec<Adapter> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: api.into(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let infos = futures::executor::block_on(instance.enumerate_adapters(api.into()));
    let mut counters = [0usize; 5];
    infos
        .iter()
        .map(|adapter| {
            let info = adapter.get_info();
            let (class, slot) = match info.device_type {
                wgpu::DeviceType::DiscreteGpu => (DeviceClass::Discrete, 0),
                wgpu::DeviceType::IntegratedGpu => (DeviceClass::Integrated, 1),
                wgpu::DeviceType::VirtualGpu => (DeviceClass::Virtual, 2),
                wgpu::DeviceType::Cpu => (DeviceClass::Cpu, 3),
                wgpu::DeviceType::Other => (DeviceClass::Other, 4),
            };
            let index = counters[slot];
            counters[slot] += 1;
            Adapter {
                name: info.name.clone(),
                class,
                backend: info.backend.to_str().to_string(),
                index,
            }
        })
        .collect()
}

//! The model registry: models.toml, parsed and checked. The repository
//! ships `config/models.toml`; the first start copies it to
//! `$ORCH_DATA_DIR/models.toml` (or `ORCH_MODELS_CONFIG`), which the user
//! then owns.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use orchestrator_llm::{Kernels, Penalties};

/// The registry shipped with the project.
pub const DEFAULT_REGISTRY: &str = include_str!("../../../config/models.toml");
/// Largest registry file read.
const MAX_REGISTRY_BYTES: u64 = 1024 * 1024;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Local,
    Openai,
}

/// One model the scheduler may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub id: String,
    pub provider: ProviderKind,
    /// Local: GGUF path relative to the models directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Name of the environment variable holding the key (never the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub specialties: BTreeMap<String, f64>,
    #[serde(default)]
    pub cost_per_1k_input: f64,
    #[serde(default)]
    pub cost_per_1k_output: f64,
    #[serde(default = "default_context_window")]
    pub context_window: u32,
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Local: the matrix kernels: `native`, `fast`, `precise` or `reference` (see README.md).
    #[serde(default, skip_serializing_if = "is_default")]
    pub kernels: Kernels,
    /// Repetition penalties every request to this model gets unless it
    /// sets its own.
    #[serde(default, skip_serializing_if = "no_penalties")]
    pub sampling: Penalties,
}

fn no_penalties(penalties: &Penalties) -> bool {
    *penalties == Penalties::default()
}

fn is_default(kernels: &Kernels) -> bool {
    *kernels == Kernels::default()
}

fn default_context_window() -> u32 {
    4_096
}
fn default_max_concurrency() -> u32 {
    4
}
fn default_timeout_s() -> u64 {
    120
}

impl ModelSpec {
    /// How good the model is at `task_type` (0..1): its own score for the
    /// type, else its `general` score, else 0.5.
    pub fn capability(&self, task_type: &str) -> f64 {
        self.specialties
            .get(task_type)
            .or_else(|| self.specialties.get("general"))
            .copied()
            .unwrap_or(0.5)
    }

    /// Estimated cost in USD of a call.
    pub fn cost(&self, input_tokens: u32, output_tokens: u32) -> f64 {
        (input_tokens as f64 * self.cost_per_1k_input
            + output_tokens as f64 * self.cost_per_1k_output)
            / 1_000.0
    }

    fn check(&self) -> Result<(), String> {
        let id = &self.id;
        if !valid_id(id) {
            return Err(format!(
                "model id {id:?}: 1 to 64 characters of a-z, 0-9, '.', '_', '-', '@', \
                 starting with a letter or digit, without '..'"
            ));
        }
        self.sampling
            .check()
            .map_err(|e| format!("model {id}: sampling: {e}"))?;
        match self.provider {
            ProviderKind::Local => {
                let file = self.file.as_deref().unwrap_or("");
                if file.is_empty() || Path::new(file).is_absolute() || file.contains("..") {
                    return Err(format!(
                        "model {id}: local models need `file`, a path inside the models directory"
                    ));
                }
            }
            ProviderKind::Openai => {
                let base = self.base_url.as_deref().unwrap_or("");
                let parsed = url::Url::parse(base)
                    .map_err(|_| format!("model {id}: base_url {base:?} is not a URL"))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(format!("model {id}: base_url must be http or https"));
                }
                if self.model.as_deref().unwrap_or("").is_empty() {
                    return Err(format!("model {id}: openai models need `model`"));
                }
                if let Some(var) = &self.api_key_env
                    && (var.is_empty()
                        || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                {
                    return Err(format!("model {id}: api_key_env must be a variable name"));
                }
                if self.kernels != Kernels::default() {
                    return Err(format!(
                        "model {id}: `kernels` applies to local models only"
                    ));
                }
            }
        }
        for (task_type, score) in &self.specialties {
            if !(0.0..=1.0).contains(score) {
                return Err(format!("model {id}: specialty {task_type} must be 0 to 1"));
            }
        }
        let valid_cost = |c: f64| c.is_finite() && c >= 0.0;
        if !valid_cost(self.cost_per_1k_input) || !valid_cost(self.cost_per_1k_output) {
            return Err(format!("model {id}: costs must be 0 or more"));
        }
        if !(256..=10_000_000).contains(&self.context_window) {
            return Err(format!(
                "model {id}: context_window must be 256 to 10,000,000"
            ));
        }
        if !(1..=4_096).contains(&self.max_concurrency) {
            return Err(format!("model {id}: max_concurrency must be 1 to 4,096"));
        }
        if !(1..=3_600).contains(&self.timeout_s) {
            return Err(format!("model {id}: timeout_s must be 1 to 3,600"));
        }
        Ok(())
    }
}

/// Ids: lower-case letters, digits and `._-@` (the `@` names adapters),
/// starting with a letter or digit and without `..`: ids name directories
/// (adapters, weights), so none may climb out of its parent.
pub fn valid_id(id: &str) -> bool {
    id.len() <= 64
        && id
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && !id.contains("..")
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-@".contains(c))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    model: Vec<ModelSpec>,
}

/// Every registered model, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Registry {
    models: Vec<ModelSpec>,
}

impl Registry {
    /// Parses and checks registry text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: RegistryFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.model.is_empty() {
            return Err("the registry lists no [[model]]".into());
        }
        let mut seen = std::collections::HashSet::new();
        for model in &file.model {
            model.check()?;
            if !seen.insert(model.id.as_str()) {
                return Err(format!("model id {} is listed twice", model.id));
            }
        }
        Ok(Self { models: file.model })
    }

    /// Reads the registry at `path`, first writing the shipped one there if
    /// the file does not exist yet.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        if !path.exists() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            // One partial file per process: processes starting together on
            // a fresh data directory each rename their own complete copy.
            let partial = path.with_extension(format!("toml.{}.partial", std::process::id()));
            std::fs::write(&partial, DEFAULT_REGISTRY)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            std::fs::rename(&partial, path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        anyhow::ensure!(
            size <= MAX_REGISTRY_BYTES,
            "{} is over {MAX_REGISTRY_BYTES} bytes",
            path.display()
        );
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn models(&self) -> &[ModelSpec] {
        &self.models
    }

    pub fn get(&self, id: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_name_a_path_outside_their_directory() {
        for good in ["smollm2", "gpt-4o.mini", "smollm2@adapter-v3", "a"] {
            assert!(valid_id(good), "{good}");
        }
        for bad in [
            "", "..", ".", ".hidden", "a..b", "../etc", "a/b", "A", "-x", "@latest",
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
        assert!(!valid_id(&"a".repeat(65)));
    }

    #[test]
    fn shipped_registry_parses() {
        let registry = Registry::parse(DEFAULT_REGISTRY).unwrap();
        let smol = registry.get("smollm2").unwrap();
        assert_eq!(smol.provider, ProviderKind::Local);
        assert!(smol.capability("summarization") > smol.capability("coding"));
        assert_eq!(smol.capability("unheard-of"), smol.capability("general"));
    }

    #[test]
    fn bad_registries_are_refused_with_the_reason() {
        let cases = [
            ("", "no [[model]]"),
            (
                "[[model]]\nid = \"A\"\nprovider = \"local\"\nfile = \"x.gguf\"",
                "model id",
            ),
            (
                "[[model]]\nid = \"a\"\nprovider = \"local\"\nfile = \"../x.gguf\"",
                "inside the models",
            ),
            (
                "[[model]]\nid = \"a\"\nprovider = \"openai\"\nbase_url = \"ftp://x\"\nmodel = \"m\"",
                "http or https",
            ),
            (
                "[[model]]\nid = \"a\"\nprovider = \"local\"\nfile = \"x\"\nspecialties = { coding = 2.0 }",
                "0 to 1",
            ),
            (
                "[[model]]\nid = \"a\"\nprovider = \"local\"\nfile = \"x\"\n[[model]]\nid = \"a\"\nprovider = \"local\"\nfile = \"y\"",
                "twice",
            ),
            (
                "[[model]]\nid = \"a\"\nprovider = \"local\"\nfile = \"x\"\ncolour = 1",
                "unknown field",
            ),
            (
                "[[model]]\nid = \"a\"\nprovider = \"local\"\nfile = \"x\"\nkernels = \"turbo\"",
                "expected one of `native`, `fast`, `precise`, `reference`",
            ),
            (
                "[[model]]\nid = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x/v1\"\nmodel = \"m\"\nkernels = \"precise\"",
                "local models only",
            ),
        ];
        for (text, want) in cases {
            let err = Registry::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?} gave {err:?}, wanted {want:?}");
        }
    }

    #[test]
    fn kernels_default_to_native_and_precise_is_kept() {
        let text =
            "[[model]]\nid = \"a\"\nprovider = \"local\"\nfile = \"x\"\nkernels = \"precise\"";
        assert_eq!(
            Registry::parse(text).unwrap().models()[0].kernels,
            Kernels::Precise
        );
        let smol = Registry::parse(DEFAULT_REGISTRY).unwrap();
        assert_eq!(smol.get("smollm2").unwrap().kernels, Kernels::Native);
    }

    #[test]
    fn costs_are_per_thousand_tokens() {
        let mut spec = Registry::parse(DEFAULT_REGISTRY).unwrap().models()[0].clone();
        spec.cost_per_1k_input = 1.0;
        spec.cost_per_1k_output = 2.0;
        assert!((spec.cost(500, 250) - 1.0).abs() < 1e-12);
    }
}

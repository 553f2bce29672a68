//! `lienthong.toml`: the file given by `--config` or `LIENTHONG_CONFIG`,
//! then `LIENTHONG_SECTION__KEY` environment overrides, over the embedded
//! defaults (SQLite under ./data, gRPC on 127.0.0.1:50051).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use lienthong_core::pipeline::Limits;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub gateway: GatewaySection,
    pub grpc: GrpcSection,
    pub database: DatabaseSection,
    pub storage: StorageSection,
    pub trust: TrustSection,
    pub auth: AuthSection,
    pub limits: LimitsSection,
    pub receipts: ReceiptsSection,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ReceiptsSection {
    /// The gateway's receipt-signing key (PKCS#8 PEM). Without it receipts
    /// are unsigned.
    pub key: Option<PathBuf>,
    /// Its certificate chain (PEM, leaf first).
    pub cert: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySection {
    /// This gateway's name in traces and receipts.
    pub id: String,
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            id: "lienthong".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcSection {
    pub listen: SocketAddr,
}

impl Default for GrpcSection {
    fn default() -> Self {
        GrpcSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSection {
    /// `sqlite://PATH` or `postgres://USER[:PASSWORD]@HOST:PORT/DB`.
    pub url: String,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        DatabaseSection {
            url: "sqlite://./data/lienthong.db".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    /// Where attachments are kept, content-addressed.
    pub path: PathBuf,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            path: PathBuf::from("./data/blobs"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TrustSection {
    /// PEM files of the certification authorities whose signing
    /// certificates this gateway trusts.
    pub anchors: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AuthModeSetting {
    /// The caller names itself in the `x-organ-id` header. For trying it out.
    DevHeader,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    pub mode: AuthModeSetting,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            mode: AuthModeSetting::DevHeader,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    pub max_envelope_bytes: usize,
    pub max_attachment_bytes: u64,
    pub max_attachments: usize,
    pub max_recipients: usize,
    pub redelivery_after_secs: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let l = Limits::default();
        LimitsSection {
            max_envelope_bytes: l.max_envelope_bytes,
            max_attachment_bytes: l.max_attachment_bytes,
            max_attachments: l.max_attachments,
            max_recipients: l.max_recipients,
            redelivery_after_secs: l.redelivery_after.as_secs(),
        }
    }
}

impl LimitsSection {
    pub fn to_limits(&self) -> Limits {
        Limits {
            max_envelope_bytes: self.max_envelope_bytes,
            max_attachment_bytes: self.max_attachment_bytes,
            max_attachments: self.max_attachments,
            max_recipients: self.max_recipients,
            redelivery_after: Duration::from_secs(self.redelivery_after_secs.max(1)),
        }
    }
}

impl Config {
    /// Defaults, then the file (if any), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                anyhow::bail!("the configuration file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file_exact(f));
        }
        // Only SECTION__KEY variables: LIENTHONG_CONFIG and the like are not keys.
        fig = fig.merge(
            Env::prefixed("LIENTHONG_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        let cfg: Config = fig.extract().map_err(|e| {
            anyhow::anyhow!(
                "the configuration is not valid: {e}{}",
                file.map(|f| format!(" (file {})", f.display()))
                    .unwrap_or_default()
            )
        })?;
        Ok(cfg)
    }

    /// The gRPC address a local client should dial.
    pub fn grpc_client_url(&self) -> String {
        let mut addr = self.grpc.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    }

    pub fn anchors(&self) -> Result<lienthong_core::signing::TrustAnchors> {
        lienthong_core::signing::TrustAnchors::from_pem_files(&self.trust.anchors)
            .map_err(|e| anyhow::anyhow!("{}", e.message()))
            .context("loading trust.anchors")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults() -> Result<()> {
        let c = Config::load(None)?;
        assert_eq!(c.grpc.listen.to_string(), "127.0.0.1:50051");
        assert!(c.database.url.starts_with("sqlite://./data/"));
        assert_eq!(c.auth.mode, AuthModeSetting::DevHeader);
        Ok(())
    }

    #[test]
    fn file_and_unknown_keys() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("l.toml");
        std::fs::write(
            &f,
            "[grpc]\nlisten = \"127.0.0.1:6000\"\n[limits]\nmax_attachments = 3\n",
        )?;
        let c = Config::load(Some(&f))?;
        assert_eq!(c.grpc.listen.port(), 6000);
        assert_eq!(c.limits.max_attachments, 3);
        std::fs::write(&f, "[grpc]\nlisen = \"127.0.0.1:6000\"\n")?;
        let err = Config::load(Some(&f))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("lisen"), "{err}");
        Ok(())
    }
}

//! A development trust domain on disk: CA, gateway, IdP, audit and admin keys, SVIDs for the
//! named agents, the bundle and a gateway config, written completely or not at all, never over
//! existing files. Used by `fedgate init` and the demo (the library never reaches into `cli/`).

use std::path::{Path, PathBuf};

use crate::devkit::{DevDomain, DEV_SVID_VALIDITY};
use crate::files::{pem_encode, write_new, write_private};
use crate::server::config::{Admin, GatewayConfig, Keys, Listen, Strip, Tls};

/// What to provision.
#[derive(Debug, Clone)]
pub struct DomainSpec {
    /// The trust domain, e.g. company.com.
    pub trust_domain: String,
    /// Output directory (must not exist, or be empty).
    pub out: PathBuf,
    /// Agents to issue X509-SVIDs for, as `type/instance`.
    pub agents: Vec<String>,
    /// Listener addresses written to gateway.toml.
    pub internal: String,
    pub federation: String,
    pub admin: String,
    /// Accept admin requests from loopback without a client certificate.
    pub admin_loopback: bool,
}

/// Why provisioning failed; nothing is left behind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    #[error("agent {0}")]
    Agent(String),
    #[error("{}: already exists and is not empty; refusing to overwrite", .0.display())]
    Exists(PathBuf),
    #[error("{0}")]
    Io(String),
}

fn agent_parts(s: &str) -> Result<(String, String), ProvisionError> {
    let (t, i) = s
        .split_once('/')
        .ok_or_else(|| ProvisionError::Agent(format!("{s:?}: expected type/instance")))?;
    let ok = |x: &str| {
        !x.is_empty()
            && x.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            && x != "."
            && x != ".."
    };
    if !ok(t) || !ok(i) {
        return Err(ProvisionError::Agent(format!(
            "{s:?}: type and instance must be non-empty [A-Za-z0-9._-]"
        )));
    }
    Ok((t.to_string(), i.to_string()))
}

fn io(e: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::Io(e.to_string())
}

/// Writes the whole domain into `dir` (which must not exist yet).
pub fn write_domain(args: &DomainSpec, dir: &Path, now: i64) -> Result<(), ProvisionError> {
    let d = DevDomain::new(&args.trust_domain, now).map_err(io)?;
    let agents: Vec<(String, String)> = args
        .agents
        .iter()
        .map(|a| agent_parts(a))
        .collect::<Result<_, _>>()?;
    let td = d.td.as_str().to_string();

    write_new(&dir.join("ca.pem"), d.ca.cert_pem.as_bytes(), 0o644).map_err(io)?;
    write_private(&dir.join("keys/ca.key"), d.ca.key_pem().as_bytes()).map_err(io)?;
    write_new(
        &dir.join("gateway.pem"),
        d.gateway_svid.cert_pem.as_bytes(),
        0o644,
    )
    .map_err(io)?;
    write_private(
        &dir.join("keys/gateway-svid.key"),
        d.gateway_svid.key_pem.as_bytes(),
    )
    .map_err(io)?;
    write_private(
        &dir.join("keys/gateway.key"),
        pem_encode("PRIVATE KEY", &d.gateway_key_der).as_bytes(),
    )
    .map_err(io)?;
    write_private(
        &dir.join("keys/idp.key"),
        pem_encode("PRIVATE KEY", &d.idp_key_der).as_bytes(),
    )
    .map_err(io)?;
    write_private(
        &dir.join("keys/audit.key"),
        pem_encode("PRIVATE KEY", &d.audit_key_der).as_bytes(),
    )
    .map_err(io)?;
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    crate::crypto::random_bytes(&mut *secret);
    let hexkey = zeroize::Zeroizing::new(format!("{}\n", crate::crypto::hex(&*secret)));
    write_private(&dir.join("keys/pseudonym.key"), hexkey.as_bytes()).map_err(io)?;

    let admin_id = d.td.id_with_path("/admin").map_err(io)?;
    let admin =
        d.ca.issue_svid(&admin_id, now, DEV_SVID_VALIDITY, &[], &[])
            .map_err(io)?;
    write_new(&dir.join("admin.pem"), admin.cert_pem.as_bytes(), 0o644).map_err(io)?;
    write_private(&dir.join("keys/admin.key"), admin.key_pem.as_bytes()).map_err(io)?;

    for (t, i) in &agents {
        let a = d.agent(t, i, now).map_err(io)?;
        write_new(
            &dir.join(format!("agents/{t}/{i}.pem")),
            a.svid.cert_pem.as_bytes(),
            0o644,
        )
        .map_err(io)?;
        write_private(
            &dir.join(format!("agents/{t}/{i}.key")),
            a.svid.key_pem.as_bytes(),
        )
        .map_err(io)?;
    }

    write_new(
        &dir.join(format!("bundles/{td}.json")),
        d.bundle.to_json().as_bytes(),
        0o644,
    )
    .map_err(io)?;
    std::fs::create_dir_all(dir.join("agreements")).map_err(io)?;
    std::fs::create_dir_all(dir.join("data")).map_err(io)?;

    let cfg = GatewayConfig {
        trust_domain: td.clone(),
        gateway_id: d.gateway_id.to_string(),
        idp_id: Some(d.idp_id.to_string()),
        data_dir: "data".into(),
        bundles_dir: "bundles".into(),
        agreements_dir: "agreements".into(),
        listen: Listen {
            internal: args.internal.clone(),
            federation: args.federation.clone(),
            admin: args.admin.clone(),
        },
        tls: Tls {
            cert: "gateway.pem".into(),
            key: "keys/gateway-svid.key".into(),
        },
        keys: Keys {
            signing: "keys/gateway.key".into(),
            audit: "keys/audit.key".into(),
            pseudonym: "keys/pseudonym.key".into(),
        },
        admin: Admin {
            ids: vec![admin_id.to_string()],
            allow_loopback: args.admin_loopback,
        },
        upstreams: vec![],
        strip: Strip {
            extra_headers: vec!["X-Api-Key".into()],
            ingress_headers: vec![],
        },
        policy: Default::default(),
        chain: Default::default(),
        limits: Default::default(),
        lifecycle: Default::default(),
        state: Default::default(),
    };
    let header = format!(
        "# fedgate gateway config for {td}, written by `fedgate init`.\n\
         # Partner bundles go in bundles/, signed agreements in agreements/;\n\
         # add [[upstreams]] for local agents that partners may reach.\n\n"
    );
    write_new(
        &dir.join("gateway.toml"),
        format!("{header}{}", cfg.to_toml()).as_bytes(),
        0o644,
    )
    .map_err(io)?;
    Ok(())
}

/// Writes the domain into `args.out` atomically (into a temporary sibling, renamed into
/// place); `args.out` must not exist or be empty. Returns the directory.
pub fn provision(args: &DomainSpec, now: i64) -> Result<PathBuf, ProvisionError> {
    let out = &args.out;
    if out.exists() {
        let empty = out.is_dir()
            && std::fs::read_dir(out)
                .map(|mut r| r.next().is_none())
                .unwrap_or(false);
        if !empty {
            return Err(ProvisionError::Exists(out.clone()));
        }
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io)?;
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("init");
    let tmp = parent.join(format!(".{name}.init-{}", crate::crypto::random_id()));
    std::fs::create_dir(&tmp).map_err(io)?;
    if let Err(e) = write_domain(args, &tmp, now) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, out) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io(format!("{}: {e}", out.display())));
    }
    Ok(out.clone())
}

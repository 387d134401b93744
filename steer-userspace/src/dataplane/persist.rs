//! What survives a restart: the userspace bookkeeping that pairs with the
//! pinned maps (which real id belongs to which backend of which service).
//! The maps themselves live on bpffs; this file lives next to the control
//! socket. Written atomically (temp file + rename) after every change.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const STATE_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedReal {
    pub id: u32,
    pub address: IpAddr,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedService {
    pub name: String,
    pub vip_id: u32,
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    pub flags: u32,
    pub generation: u32,
    pub reals: BTreeMap<String, SavedReal>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedState {
    pub version: u32,
    pub ring_size: u32,
    pub max_tables: u32,
    pub max_reals: u32,
    pub conntrack_size: u32,
    pub services: Vec<SavedService>,
    /// Non-zero real generations, by real id.
    pub real_generation: BTreeMap<u32, u32>,
    pub free_reals: Vec<u32>,
    pub next_real: u32,
    pub drained: Vec<String>,
}

pub fn save(path: &Path, state: &SavedState) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let data = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

pub fn load(path: &Path) -> std::io::Result<Option<SavedState>> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

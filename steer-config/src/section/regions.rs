//! `[[regions]]`: named groups of backends. Their names are checked for
//! uniqueness with the other sections' (`section/mod.rs`); a region without
//! backends is allowed.

use toml::Table;

use crate::model::PRegion;
use crate::values::{name, string};
use crate::walker::{Node, Walker};

pub(super) fn read(w: &mut Walker, at: &str, t: &Table) -> PRegion {
    let n = Node::new(w, at, t);
    let region = PRegion {
        name: n.required(w, "name", "e.g. \"eu-west\"", name),
        description: n.optional(w, "description", string),
        at: at.to_string(),
    };
    n.done(w);
    region
}

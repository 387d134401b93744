//! The partial model: a config as read, before it is known to be valid.
//!
//! Every section is first read into a *partial* struct in which a field is
//! `None` when its value was rejected (the error is then already recorded).
//! Cross-reference checks only look at fields that are `Some`, so one bad
//! value never causes a cascade of follow-on errors. Only when no error at all
//! was recorded is the partial model turned into a [`crate::Config`].
//!
//! The partial structs are not written by hand: [`model!`] generates each one,
//! and its `finish`, from the declaration of the public struct, so a field is
//! declared once (in `model.rs`) and read once (in its section's reader).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::model::{
    Affinity, AttachMode, CheckKind, ClientPrefix, Encapsulation, Ipv4Prefix, Ipv6Prefix,
    LatencyTuning, Milli, OnNoHealthy, OutlierTuning, Policy, PolicyKind, Protocol,
    SlowStartTuning,
};
use crate::section::classes::Sourced;

/// How a field of the model is held while it may still be invalid.
pub(crate) trait Field: Sized {
    /// `None` = rejected. Lists keep one entry per element, `None` where
    /// that element was rejected, so that paths (`backends[2]`) stay right.
    type Partial;
    /// The valid value, if nothing in it was rejected.
    fn finish(partial: Self::Partial) -> Option<Self>;
}

/// A value read whole from one TOML value.
pub(crate) trait Plain {}

macro_rules! plain {
    ($($t:ty),* $(,)?) => {$(
        impl Plain for $t {}
        impl Field for $t {
            type Partial = Option<$t>;
            fn finish(partial: Option<$t>) -> Option<$t> {
                partial
            }
        }
    )*};
}
plain!(
    String,
    bool,
    u8,
    u16,
    u32,
    [u8; 6],
    IpAddr,
    SocketAddr,
    PathBuf,
    Duration,
    AttachMode,
    Encapsulation,
    Protocol,
    Affinity,
    CheckKind,
    Ipv4Prefix,
    Ipv6Prefix,
    Milli,
    Policy,
    PolicyKind,
    OnNoHealthy,
    LatencyTuning,
    OutlierTuning,
    SlowStartTuning,
);

/// An optional key: `Some(None)` when absent.
impl<T: Plain> Field for Option<T> {
    type Partial = Option<Option<T>>;
    fn finish(partial: Self::Partial) -> Option<Self> {
        partial
    }
}

/// An array: `Some(vec![])` when absent; `None` when not an array.
impl<T: Plain> Field for Vec<T> {
    type Partial = Option<Vec<Option<T>>>;
    fn finish(partial: Self::Partial) -> Option<Self> {
        partial?.into_iter().collect()
    }
}

/// A class's prefixes: each with where it came from (for error paths),
/// sorted and deduplicated by the reader; `None` if a source was rejected.
impl Field for Vec<ClientPrefix> {
    type Partial = Option<Vec<Sourced>>;
    fn finish(partial: Self::Partial) -> Option<Self> {
        Some(partial?.into_iter().map(|s| s.prefix).collect())
    }
}

/// An optional list (`allowed_regions`): `Some(None)` when absent.
impl Field for Option<Vec<String>> {
    type Partial = Option<Option<Vec<Option<String>>>>;
    fn finish(partial: Self::Partial) -> Option<Self> {
        match partial? {
            None => Some(None),
            Some(list) => Some(Some(list.into_iter().collect::<Option<Vec<_>>>()?)),
        }
    }
}

/// Declares public model structs and, for each, its partial twin
/// (`partial Name`): the same fields held as [`Field::Partial`], plus `at`,
/// the entry's path, and a `finish` that turns it into the public struct.
macro_rules! model {
    ($(
        $(#[$meta:meta])*
        pub struct $name:ident (partial $partial:ident) {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty, )*
        }
    )*) => {$(
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        /// As read: a field is `None` where its value was rejected.
        pub(crate) struct $partial {
            /// Where the entry is: `backends[2]`, `dataplane`.
            pub(crate) at: String,
            $( pub(crate) $field: <$ty as $crate::partial::Field>::Partial, )*
        }

        impl $partial {
            /// The valid entry, if no field of it was rejected.
            pub(crate) fn finish(self) -> Option<$name> {
                Some($name {
                    $( $field: <$ty as $crate::partial::Field>::finish(self.$field)?, )*
                })
            }
        }
    )*};
}
pub(crate) use model;

//! Upgrade description files (UDF), Tails' version 2 schema: the file format ([`format`]: the
//! schema types, parse, deterministic emit), making a UDF from kits on the build side
//! ([`describe`]) and choosing the upgrade path a device takes on the device side ([`select`]).
//! Every item is re-exported here, so callers name `udf::Udf`, `udf::describe`,
//! `udf::select_path`.

pub mod describe;
pub mod format;
pub mod select;

pub use describe::{describe, DescribeError, DescribeInput, Offered};
pub use format::{
    read_file, PathType, TargetFile, Udf, UdfError, Upgrade, UpgradePath, UpgradeType, MAX_ENTRIES,
    MAX_UDF,
};
pub use select::{select_path, Device, Model, Selection};

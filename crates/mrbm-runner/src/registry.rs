//! Every stage kind the `mrbm` binary knows, by name.

use std::collections::BTreeMap;

use mrbm_stage::Stage;

pub struct Registry {
    stages: BTreeMap<&'static str, Box<dyn Stage>>,
}

impl Registry {
    /// The built-in kinds: data (dataset, transform), model (train, sample,
    /// reconstruct, features), evaluation (svm, fid_stats, fid) and table.
    pub fn builtin() -> Registry {
        let mut all: Vec<Box<dyn Stage>> = Vec::new();
        all.extend(mrbm_data::stages());
        all.extend(mrbm_core::stages());
        all.extend(mrbm_eval::stages());
        all.push(Box::new(crate::table::TableStage));
        all.push(Box::new(crate::collect::CollectStage));
        Registry::from_stages(all)
    }

    pub fn from_stages(list: Vec<Box<dyn Stage>>) -> Registry {
        Registry {
            stages: list.into_iter().map(|s| (s.kind(), s)).collect(),
        }
    }

    pub fn get(&self, kind: &str) -> Option<&dyn Stage> {
        self.stages.get(kind).map(|b| b.as_ref())
    }

    /// Kinds a user may write in a pipeline (the table kind is implicit).
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.stages.keys().copied().filter(|k| *k != "table")
    }
}

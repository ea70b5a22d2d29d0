//! An ordered set of ClientIds that can be read by rank (offset paging) and by key (cursor
//! paging) without walking from the start.
//!
//! Invariant: the ids are kept in sorted blocks, none empty, each at most `2 * BLOCK` long,
//! every id of a block below every id of the next. Finding the n-th id walks the block lengths
//! (n / BLOCK steps at most), so a page of a million-id group costs microseconds at any offset.

/// Target block length; a block splits when it reaches twice this.
const BLOCK: usize = 512;

/// The ClientIds of one `(instance, group)`, sorted.
#[derive(Debug, Clone, Default)]
pub(crate) struct IdSet {
    blocks: Vec<Vec<Box<str>>>,
    len: usize,
}

impl IdSet {
    /// A set of `ids`, which may come in any order and with repeats.
    pub(crate) fn from_unsorted(mut ids: Vec<Box<str>>) -> IdSet {
        ids.sort_unstable();
        ids.dedup();
        let len = ids.len();
        let mut blocks = Vec::with_capacity(len.div_ceil(BLOCK));
        let mut rest = ids.into_iter().peekable();
        while rest.peek().is_some() {
            blocks.push(rest.by_ref().take(BLOCK).collect());
        }
        IdSet { blocks, len }
    }

    /// Number of ids.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The block that holds `id` if any block does: the last whose first id is at most `id`.
    fn block_of(&self, id: &str) -> usize {
        self.blocks
            .partition_point(|b| &*b[0] <= id)
            .saturating_sub(1)
    }

    /// Whether `id` is in the set.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.blocks
            .get(self.block_of(id))
            .is_some_and(|b| b.binary_search_by(|x| (**x).cmp(id)).is_ok())
    }

    /// Adds `id`; returns whether it was new.
    pub(crate) fn insert(&mut self, id: &str) -> bool {
        if self.blocks.is_empty() {
            self.blocks.push(vec![id.into()]);
            self.len = 1;
            return true;
        }
        let at = self.block_of(id);
        let block = &mut self.blocks[at];
        let Err(pos) = block.binary_search_by(|x| (**x).cmp(id)) else {
            return false;
        };
        block.insert(pos, id.into());
        if block.len() >= 2 * BLOCK {
            let tail = block.split_off(BLOCK);
            self.blocks.insert(at + 1, tail);
        }
        self.len += 1;
        true
    }

    /// Removes `id`; returns whether it was there.
    pub(crate) fn remove(&mut self, id: &str) -> bool {
        let at = self.block_of(id);
        let Some(block) = self.blocks.get_mut(at) else {
            return false;
        };
        let Ok(pos) = block.binary_search_by(|x| (**x).cmp(id)) else {
            return false;
        };
        block.remove(pos);
        if block.is_empty() {
            self.blocks.remove(at);
        }
        self.len -= 1;
        true
    }

    /// Up to `n` ids from rank `skip` on (0-based), in order.
    pub(crate) fn page_at(&self, skip: usize, n: usize) -> Vec<&str> {
        let mut out = Vec::with_capacity(n.min(self.len.saturating_sub(skip)));
        let mut left = skip;
        for block in &self.blocks {
            if out.len() == n {
                break;
            }
            if left >= block.len() {
                left -= block.len();
                continue;
            }
            let take = (n - out.len()).min(block.len() - left);
            out.extend(block[left..left + take].iter().map(|s| &**s));
            left = 0;
        }
        out
    }

    /// Up to `n` ids strictly after `after`, in order (`after` itself need not be in the set).
    pub(crate) fn page_after(&self, after: &str, n: usize) -> Vec<&str> {
        let mut out = Vec::with_capacity(n.min(self.len));
        let start = self.block_of(after);
        for block in self.blocks.iter().skip(start) {
            if out.len() == n {
                break;
            }
            let from = block.partition_point(|x| &**x <= after);
            let take = (n - out.len()).min(block.len() - from);
            out.extend(block[from..from + take].iter().map(|s| &**s));
        }
        out
    }

    /// Every id, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        self.blocks.iter().flatten().map(|s| &**s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Box<str>> {
        (0..n).map(|i| format!("GID_t@@@d{i:06}").into()).collect()
    }

    #[test]
    fn pages_by_rank_and_by_key_agree_with_a_sorted_vector_under_inserts_and_removes() {
        let mut model: Vec<String> = ids(3000).iter().map(|s| s.to_string()).collect();
        let mut set = IdSet::from_unsorted(ids(3000).into_iter().rev().collect());
        // Removals and inserts spread over every block, enough to split and empty some.
        for i in (0..3000).step_by(3) {
            let id = format!("GID_t@@@d{i:06}");
            assert!(set.remove(&id));
            assert!(!set.remove(&id));
            model.retain(|m| *m != id);
        }
        for i in 0..1500 {
            let id = format!("GID_t@@@d{:06}x", i * 2);
            assert!(set.insert(&id));
            assert!(!set.insert(&id));
            model.push(id);
        }
        model.sort();
        assert_eq!(set.len(), model.len());
        assert!(set.iter().eq(model.iter().map(String::as_str)));
        for blocks in set.blocks.windows(2) {
            assert!(blocks[0].last() < blocks[1].first());
        }
        assert!(set
            .blocks
            .iter()
            .all(|b| !b.is_empty() && b.len() < 2 * BLOCK));
        for skip in [
            0,
            1,
            511,
            512,
            1000,
            model.len() - 3,
            model.len(),
            model.len() + 5,
        ] {
            let want: Vec<&str> = model
                .iter()
                .skip(skip)
                .take(100)
                .map(String::as_str)
                .collect();
            assert_eq!(set.page_at(skip, 100), want, "skip {skip}");
        }
        for key in [
            "",
            "GID_t@@@d000000",
            "GID_t@@@d001500",
            "GID_t@@@d001500y",
            "zzz",
        ] {
            let want: Vec<&str> = model
                .iter()
                .filter(|m| m.as_str() > key)
                .take(77)
                .map(String::as_str)
                .collect();
            assert_eq!(set.page_after(key, 77), want, "after {key}");
        }
        assert!(set.contains("GID_t@@@d000001") && !set.contains("GID_t@@@d000000"));
    }

    #[test]
    fn an_empty_set_answers_empty_pages() {
        let mut set = IdSet::default();
        assert!(set.page_at(0, 10).is_empty() && set.page_after("a", 10).is_empty());
        assert!(!set.remove("a") && !set.contains("a"));
        assert!(set.insert("a") && set.contains("a"));
        assert!(set.remove("a") && set.len() == 0 && set.blocks.is_empty());
    }
}

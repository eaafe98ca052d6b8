//! The embedded store's in-memory index: every vector in one contiguous
//! buffer for the exact scan, and, from `ANN_MIN_POINTS` on, an HNSW graph
//! (`hnsw`) beside it. Slots are reused after removals, so the buffer does
//! not grow with churn.

use std::{cmp::Ordering, collections::BinaryHeap, collections::HashMap};

use rayon::prelude::*;

use super::{
    Filter, SearchMode,
    hnsw::{self, Hnsw},
    simd,
};

/// Below this many candidates an exact scan answers in about a millisecond,
/// so the graph would only cost memory and build time.
pub const ANN_MIN_POINTS: usize = 50_000;
/// HNSW parameters: M and efConstruction the same as the faiss peer in the
/// bench. The graph walks i8 codes; its candidates are re-ranked here with
/// the f32 vectors, so returned scores are exact.
const ANN_PARAMS: hnsw::Params = hnsw::Params {
    connectivity: 32,
    expansion_add: 128,
    expansion_search: 64,
};
/// Slots scanned per rayon task in the exact scan.
const SCAN_BLOCK: usize = 4096;

/// Interned payload strings, so filtering compares integers.
#[derive(Default)]
struct Symbols {
    ids: HashMap<String, u32>,
}

impl Symbols {
    fn intern(&mut self, name: &str) -> u32 {
        let next = self.ids.len() as u32;
        *self.ids.entry(name.to_string()).or_insert(next)
    }

    fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }
}

#[derive(Clone, Copy)]
struct Entry {
    pack: u32,
    source: u32,
    kind: u32,
}

/// A filter with its strings resolved to symbols; `None` inside means the
/// value was never stored, so nothing can match.
struct ResolvedFilter {
    packs: Option<Vec<u32>>,
    source: Option<Option<u32>>,
    kind: Option<Option<u32>>,
}

impl ResolvedFilter {
    fn is_unfiltered(&self) -> bool {
        self.packs.is_none() && self.source.is_none() && self.kind.is_none()
    }

    fn matches(&self, entry: &Entry) -> bool {
        self.packs.as_ref().is_none_or(|p| p.contains(&entry.pack))
            && self.source.is_none_or(|s| s == Some(entry.source))
            && self.kind.is_none_or(|k| k == Some(entry.kind))
    }
}

/// A scored slot, ordered so a max-heap keeps the worst on top.
#[derive(Clone, Copy, PartialEq)]
struct Scored {
    score: f32,
    slot: u32,
}

impl Eq for Scored {}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.slot.cmp(&other.slot))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

pub struct Index {
    dimension: usize,
    vectors: Vec<f32>,
    entries: Vec<Option<Entry>>,
    ids: Vec<uuid::Uuid>,
    free: Vec<u32>,
    by_id: HashMap<uuid::Uuid, u32>,
    symbols: Symbols,
    live: usize,
    ann: Option<Hnsw>,
    /// Set while [`Index::insert_many`] runs: the graph is built at the end.
    deferring_ann: bool,
    /// [`ANN_MIN_POINTS`], lower in tests.
    ann_min_points: usize,
}

impl Index {
    pub fn new(dimension: usize) -> Self {
        Self {
            dimension,
            vectors: Vec::new(),
            entries: Vec::new(),
            ids: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            symbols: Symbols::default(),
            live: 0,
            ann: None,
            deferring_ann: false,
            ann_min_points: ANN_MIN_POINTS,
        }
    }

    /// An index that builds its graph from `points` on (tests use small
    /// graphs).
    #[cfg(test)]
    fn with_ann_min_points(dimension: usize, points: usize) -> Self {
        Self {
            ann_min_points: points,
            ..Self::new(dimension)
        }
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn has_ann(&self) -> bool {
        self.ann.is_some()
    }

    /// Sets HNSW's search breadth (recall against speed); no-op before the
    /// graph exists.
    pub fn set_ann_expansion(&self, expansion: usize) {
        if let Some(ann) = &self.ann {
            ann.set_expansion_search(expansion);
        }
    }

    /// Inserts many points. Without a graph, or when the batch would more
    /// than double the index, the graph is (re)built once at the end, in
    /// parallel: much faster than linking one point at a time (loading a
    /// store from disk goes this way). A smaller batch is linked into the
    /// existing graph point by point, since a rebuild at a million points
    /// takes minutes.
    pub fn insert_many<'a>(
        &mut self,
        points: impl IntoIterator<Item = (uuid::Uuid, &'a [f32], &'a str, &'a str, &'a str)>,
    ) -> anyhow::Result<()> {
        let points: Vec<_> = points.into_iter().collect();
        if points.len() > self.live {
            self.ann = None;
        }
        self.deferring_ann = self.ann.is_none();
        let inserted = points
            .into_iter()
            .try_for_each(|(id, vector, pack, source, kind)| {
                self.insert(id, vector, pack, source, kind)
            });
        self.deferring_ann = false;
        inserted?;
        if self.ann.is_none() && self.live >= self.ann_min_points {
            self.build_ann();
        }
        Ok(())
    }

    /// Inserts or replaces a point.
    pub fn insert(
        &mut self,
        id: uuid::Uuid,
        vector: &[f32],
        pack: &str,
        source: &str,
        kind: &str,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            vector.len() == self.dimension,
            "vector has {} dimensions, the store {}",
            vector.len(),
            self.dimension
        );
        self.remove(&id);
        let entry = Entry {
            pack: self.symbols.intern(pack),
            source: self.symbols.intern(source),
            kind: self.symbols.intern(kind),
        };
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.entries.push(None);
                self.ids.push(id);
                self.vectors
                    .resize(self.vectors.len() + self.dimension, 0.0);
                (self.entries.len() - 1) as u32
            }
        };
        let at = slot as usize * self.dimension;
        self.vectors[at..at + self.dimension].copy_from_slice(vector);
        self.entries[slot as usize] = Some(entry);
        self.ids[slot as usize] = id;
        self.by_id.insert(id, slot);
        self.live += 1;
        if let Some(ann) = &mut self.ann {
            ann.insert(slot, vector);
        } else if self.live >= self.ann_min_points && !self.deferring_ann {
            self.build_ann();
        }
        Ok(())
    }

    /// Removes a point if present. The graph keeps its node as a waypoint
    /// (searches skip empty slots) until the slot is reused.
    pub fn remove(&mut self, id: &uuid::Uuid) {
        if let Some(slot) = self.by_id.remove(id) {
            self.entries[slot as usize] = None;
            self.free.push(slot);
            self.live -= 1;
        }
    }

    /// Builds the HNSW graph over every live point, linking in parallel.
    pub fn build_ann(&mut self) {
        let slots: Vec<u32> = (0..self.entries.len() as u32)
            .filter(|&s| self.entries[s as usize].is_some())
            .collect();
        self.ann = Some(Hnsw::build(
            self.dimension,
            ANN_PARAMS,
            &self.vectors,
            &slots,
        ));
    }

    /// The `k` best (id, score) pairs among points matching `filter`.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: &Filter,
        mode: SearchMode,
    ) -> anyhow::Result<Vec<(uuid::Uuid, f32)>> {
        anyhow::ensure!(
            query.len() == self.dimension,
            "query has {} dimensions, the store {}",
            query.len(),
            self.dimension
        );
        let filter = self.resolve(filter);
        let scored = match (&self.ann, mode) {
            (Some(ann), SearchMode::Auto) if self.candidates(&filter) >= self.ann_min_points => {
                self.search_ann(ann, query, k, &filter)?
            }
            _ => self.search_exact(query, k, &filter),
        };
        Ok(scored
            .into_iter()
            .map(|s| (self.ids[s.slot as usize], s.score))
            .collect())
    }

    /// How many live points match `filter`.
    pub fn count(&self, filter: &Filter) -> usize {
        self.candidates(&self.resolve(filter))
    }

    fn candidates(&self, filter: &ResolvedFilter) -> usize {
        if filter.is_unfiltered() {
            return self.live;
        }
        self.entries
            .iter()
            .flatten()
            .filter(|e| filter.matches(e))
            .count()
    }

    fn resolve(&self, filter: &Filter) -> ResolvedFilter {
        ResolvedFilter {
            packs: filter
                .packs
                .as_ref()
                .map(|packs| packs.iter().filter_map(|p| self.symbols.get(p)).collect()),
            source: filter.source.as_deref().map(|s| self.symbols.get(s)),
            kind: filter.kind.as_deref().map(|k| self.symbols.get(k)),
        }
    }

    fn search_exact(&self, query: &[f32], k: usize, filter: &ResolvedFilter) -> Vec<Scored> {
        let dimension = self.dimension;
        let best = self
            .entries
            .par_chunks(SCAN_BLOCK)
            .enumerate()
            .map(|(block, entries)| {
                let mut heap = BinaryHeap::with_capacity(k + 1);
                for (offset, entry) in entries.iter().enumerate() {
                    if !entry.as_ref().is_some_and(|e| filter.matches(e)) {
                        continue;
                    }
                    let slot = block * SCAN_BLOCK + offset;
                    let at = slot * dimension;
                    let score = simd::dot(query, &self.vectors[at..at + dimension]);
                    push_bounded(
                        &mut heap,
                        k,
                        Scored {
                            score,
                            slot: slot as u32,
                        },
                    );
                }
                heap
            })
            .reduce(BinaryHeap::new, |mut a, b| {
                for scored in b {
                    push_bounded(&mut a, k, scored);
                }
                a
            });
        best.into_sorted_vec()
    }

    /// The graph's candidates (as many as its search breadth), re-ranked by
    /// their exact f32 scores.
    fn search_ann(
        &self,
        ann: &Hnsw,
        query: &[f32],
        k: usize,
        filter: &ResolvedFilter,
    ) -> anyhow::Result<Vec<Scored>> {
        let accept = |slot: u32| {
            self.entries
                .get(slot as usize)
                .and_then(|e| e.as_ref())
                .is_some_and(|e| filter.matches(e))
        };
        let mut scored: Vec<Scored> = ann
            .search(query, k, &accept)
            .into_iter()
            .map(|near| {
                let at = near.slot as usize * self.dimension;
                Scored {
                    score: simd::dot(query, &self.vectors[at..at + self.dimension]),
                    slot: near.slot,
                }
            })
            .collect();
        // `Scored` orders the best first.
        scored.sort_unstable();
        scored.truncate(k);
        Ok(scored)
    }
}

fn push_bounded(heap: &mut BinaryHeap<Scored>, k: usize, scored: Scored) {
    if heap.len() < k {
        heap.push(scored);
    } else if let Some(worst) = heap.peek()
        && scored.score > worst.score
    {
        heap.pop();
        heap.push(scored);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::test_vectors::unit;

    #[test]
    fn exact_search_finds_the_point_itself_first_and_respects_filters() {
        let mut index = Index::new(16);
        let ids: Vec<uuid::Uuid> = (0..500).map(|_| uuid::Uuid::now_v7()).collect();
        for (i, id) in ids.iter().enumerate() {
            let pack = if i % 2 == 0 { "even" } else { "odd" };
            index
                .insert(*id, &unit(i as u64, 16), pack, "s", "text")
                .unwrap();
        }
        let hits = index
            .search(&unit(42, 16), 3, &Filter::default(), SearchMode::Exact)
            .unwrap();
        assert_eq!(hits[0].0, ids[42]);
        assert!((hits[0].1 - 1.0).abs() < 1e-5);
        assert!(hits[1].1 <= hits[0].1 && hits[2].1 <= hits[1].1);

        let odd = index
            .search(&unit(42, 16), 10, &Filter::pack("odd"), SearchMode::Exact)
            .unwrap();
        assert_eq!(odd.len(), 10);
        assert!(
            odd.iter()
                .all(|(id, _)| ids.iter().position(|x| x == id).unwrap() % 2 == 1)
        );
        assert!(
            index
                .search(&unit(1, 16), 5, &Filter::pack("none"), SearchMode::Exact)
                .unwrap()
                .is_empty()
        );
        assert_eq!(index.count(&Filter::pack("even")), 250);
    }

    #[test]
    fn replacing_and_removing_reuses_slots() {
        let mut index = Index::new(8);
        let id = uuid::Uuid::now_v7();
        index.insert(id, &unit(1, 8), "p", "a", "text").unwrap();
        index.insert(id, &unit(2, 8), "p", "a", "text").unwrap();
        assert_eq!(index.len(), 1);
        let hit = index
            .search(&unit(2, 8), 1, &Filter::default(), SearchMode::Exact)
            .unwrap();
        assert!(
            (hit[0].1 - 1.0).abs() < 1e-5,
            "the replacement vector is the one stored"
        );
        index.remove(&id);
        assert!(index.is_empty());
        index
            .insert(uuid::Uuid::now_v7(), &unit(3, 8), "p", "a", "text")
            .unwrap();
        assert_eq!(index.entries.len(), 1, "the freed slot was reused");
    }

    #[test]
    fn the_graph_is_built_past_the_threshold_then_follows_changes() {
        let mut index = Index::with_ann_min_points(16, 2_000);
        let points: Vec<(uuid::Uuid, Vec<f32>)> = (0..2_010u64)
            .map(|i| (uuid::Uuid::now_v7(), unit(i, 16)))
            .collect();
        let insert = |index: &mut Index, points: &[(uuid::Uuid, Vec<f32>)]| {
            index
                .insert_many(
                    points
                        .iter()
                        .map(|(id, v)| (*id, v.as_slice(), "p", "s", "text")),
                )
                .unwrap()
        };
        let nearest = |index: &Index, probe: &[f32]| {
            index
                .search(probe, 1, &Filter::default(), SearchMode::Auto)
                .unwrap()[0]
        };
        insert(&mut index, &points[..1_000]);
        assert!(!index.has_ann(), "below the threshold a scan is enough");
        insert(&mut index, &points[1_000..]);
        assert!(index.has_ann());
        // The graph is built on every thread, so which links survive
        // pruning varies from run to run; now and then a node is left with
        // no way in (as in every HNSW). Nearly every point is found.
        let found = |index: &Index, points: &[(uuid::Uuid, Vec<f32>)]| {
            points
                .iter()
                .filter(|(id, vector)| nearest(index, vector).0 == *id)
                .count()
        };
        let probes: Vec<_> = points.iter().step_by(10).cloned().collect();
        assert!(found(&index, &probes) >= probes.len() - 2);

        // A small batch is linked into the existing graph.
        let later: Vec<(uuid::Uuid, Vec<f32>)> = (0..20u64)
            .map(|i| (uuid::Uuid::now_v7(), unit(50_000 + i, 16)))
            .collect();
        insert(&mut index, &later);
        assert!(index.has_ann());
        assert!(found(&index, &later) >= later.len() - 1);

        // A removed point is never returned; a replaced one (its slot
        // reused) is found by its new vector, with an exact score.
        index.remove(&points[123].0);
        assert_ne!(nearest(&index, &points[123].1).0, points[123].0);
        let moved = unit(90_000, 16);
        index.insert(points[7].0, &moved, "p", "s", "text").unwrap();
        let hit = nearest(&index, &moved);
        assert_eq!(hit.0, points[7].0);
        assert!((hit.1 - 1.0).abs() < 1e-5, "score {}", hit.1);
    }

    #[test]
    fn ann_agrees_with_exact_search_on_most_neighbours() {
        let mut index = Index::new(32);
        for i in 0..5_000u64 {
            index
                .insert(uuid::Uuid::now_v7(), &unit(i, 32), "p", "s", "text")
                .unwrap();
        }
        index.build_ann();
        let (mut found, mut total) = (0, 0);
        for q in 0..50u64 {
            let query = unit(100_000 + q, 32);
            let exact = index.search_exact(&query, 10, &index.resolve(&Filter::default()));
            let ann = index
                .search_ann(
                    index.ann.as_ref().unwrap(),
                    &query,
                    10,
                    &index.resolve(&Filter::default()),
                )
                .unwrap();
            total += exact.len();
            found += exact
                .iter()
                .filter(|e| ann.iter().any(|a| a.slot == e.slot))
                .count();
        }
        let recall = found as f64 / total as f64;
        assert!(recall >= 0.95, "recall@10 {recall}");
    }
}

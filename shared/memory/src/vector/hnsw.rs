//! The embedded store's approximate index: a hierarchical navigable small
//! world graph (Malkov & Yashunin, 2016), built for one-query-at-a-time
//! latency on large stores.
//!
//! What makes it fast where the graph no longer fits in cache (a million
//! vectors): each node keeps an i8 copy of its vector (one scale per
//! vector, 384 bytes for 384 dimensions instead of 1,536 in f32), so a hop
//! reads a quarter of the memory; the codes of a node's unvisited
//! neighbours are prefetched before any of them is scored, so their cache
//! misses overlap instead of queueing; the big arrays ask for huge pages,
//! sparing a TLB miss per hop. The caller re-ranks the candidates with the
//! exact f32 vectors, so scores and the final order are exact.
//!
//! Removed points stay in the graph as waypoints (the caller never returns
//! them); a reused slot is linked again from its new vector.

use std::{
    cell::RefCell,
    cmp::{Ordering, Reverse},
    collections::BinaryHeap,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
};

use rayon::prelude::*;

use super::simd::{self, DotI8};

/// Levels above this are never drawn (the chance is M^-16).
const MAX_LEVEL: u8 = 16;
const NO_ENTRY: u64 = u64::MAX;

/// Graph parameters.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Links per node on the upper levels (M); level 0 keeps twice as many.
    pub connectivity: usize,
    /// Candidates kept while linking a new node (efConstruction).
    pub expansion_add: usize,
    /// Candidates kept while searching (ef), at least the results asked for.
    pub expansion_search: usize,
}

/// A scored node; ordered by similarity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Near {
    pub similarity: f32,
    pub slot: u32,
}

impl Eq for Near {}

impl Ord for Near {
    fn cmp(&self, other: &Self) -> Ordering {
        self.similarity
            .total_cmp(&other.similarity)
            .then(other.slot.cmp(&self.slot))
    }
}

impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Per-thread search state, reused across searches.
#[derive(Default)]
struct Scratch {
    /// A node is visited in this search when its stamp equals `now`.
    stamps: Vec<u16>,
    now: u16,
    links: Vec<u32>,
    fresh: Vec<u32>,
}

impl Scratch {
    fn begin(&mut self, nodes: usize) {
        if self.stamps.len() < nodes {
            self.stamps.resize(nodes, 0);
        }
        self.now = self.now.wrapping_add(1);
        if self.now == 0 {
            self.stamps.fill(0);
            self.now = 1;
        }
    }

    /// Marks `slot` visited; false if it already was.
    fn visit(&mut self, slot: u32) -> bool {
        let stamp = &mut self.stamps[slot as usize];
        let fresh = *stamp != self.now;
        *stamp = self.now;
        fresh
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A vector quantised to i8 with one scale: `value ≈ code * scale`.
struct Code<'a> {
    codes: &'a [i8],
    scale: f32,
}

pub struct Hnsw {
    dimension: usize,
    params: Params,
    expansion_search: AtomicUsize,
    dot: DotI8,
    codes: Vec<i8>,
    scales: Vec<f32>,
    levels: Vec<u8>,
    /// Level 0: per node a count, then up to 2M neighbour slots.
    base_links: Vec<AtomicU32>,
    /// Levels 1..=level of each node: per level a count, then up to M slots.
    upper_links: Vec<Option<Box<[AtomicU32]>>>,
    /// Held while a node's links change, and while reading them during a
    /// build (searches run only when no build or insert does).
    locks: Vec<Mutex<()>>,
    /// The entry node and the top level, packed as `slot << 8 | level`.
    entry: AtomicU64,
    entry_lock: Mutex<()>,
}

impl Hnsw {
    /// Builds the graph over `slots` (their vectors at `slot * dimension` in
    /// `vectors`), linking nodes on all rayon threads.
    pub fn build(dimension: usize, params: Params, vectors: &[f32], slots: &[u32]) -> Self {
        let capacity = vectors.len() / dimension.max(1);
        let mut graph = Self::with_capacity(dimension, params, capacity);
        // Quantising is independent per node: do it in parallel first.
        graph
            .codes
            .par_chunks_mut(dimension)
            .zip(graph.scales.par_iter_mut())
            .zip(vectors.par_chunks(dimension))
            .for_each(|((codes, scale), vector)| *scale = quantise(vector, codes));
        let graph = graph;
        if let Some((&first, rest)) = slots.split_first() {
            graph.link(first);
            rest.par_iter().for_each(|&slot| graph.link(slot));
        }
        graph
    }

    fn with_capacity(dimension: usize, params: Params, nodes: usize) -> Self {
        let base_width = 2 * params.connectivity + 1;
        let mut graph = Self {
            dimension,
            params,
            expansion_search: AtomicUsize::new(params.expansion_search),
            dot: simd::dot_i8_kernel(),
            codes: huge_page_vec(nodes * dimension, || 0),
            scales: vec![0.0; nodes],
            levels: vec![0; nodes],
            base_links: huge_page_vec(nodes * base_width, || AtomicU32::new(0)),
            upper_links: (0..nodes).map(|_| None).collect(),
            locks: (0..nodes).map(|_| Mutex::new(())).collect(),
            entry: AtomicU64::new(NO_ENTRY),
            entry_lock: Mutex::new(()),
        };
        (0..nodes as u32).for_each(|slot| graph.add_node(slot));
        graph
    }

    /// Sets the search breadth (recall against speed).
    pub fn set_expansion_search(&self, expansion: usize) {
        self.expansion_search.store(expansion.max(1), Relaxed);
    }

    /// Adds `slot` (new, or reused with a new vector) and links it.
    pub fn insert(&mut self, slot: u32, vector: &[f32]) {
        let index = slot as usize;
        if index >= self.levels.len() {
            self.grow(index + 1);
        }
        let at = index * self.dimension;
        self.scales[index] = quantise(vector, &mut self.codes[at..at + self.dimension]);
        self.link(slot);
    }

    /// Up to `max(ef, count)` candidates accepted by `accept`, best first by
    /// their quantised similarity.
    pub fn search(&self, query: &[f32], count: usize, accept: &dyn Fn(u32) -> bool) -> Vec<Near> {
        let Some((entry, top)) = self.entry() else {
            return Vec::new();
        };
        let mut codes = vec![0i8; self.dimension];
        let scale = quantise(query, &mut codes);
        let query = Code {
            codes: &codes,
            scale,
        };
        let mut current = self.scored(&query, entry);
        for level in (1..=top).rev() {
            current = self.greedy(&query, current, level, false);
        }
        let expansion = self.expansion_search.load(Relaxed).max(count);
        self.search_level(&query, &[current], 0, expansion, false, accept)
    }

    fn grow(&mut self, nodes: usize) {
        let base_width = 2 * self.params.connectivity + 1;
        let old = self.levels.len() as u32;
        self.codes.resize(nodes * self.dimension, 0);
        self.scales.resize(nodes, 0.0);
        self.levels.resize(nodes, 0);
        self.base_links
            .resize_with(nodes * base_width, || AtomicU32::new(0));
        self.upper_links.resize_with(nodes, || None);
        self.locks.resize_with(nodes, || Mutex::new(()));
        (old..nodes as u32).for_each(|slot| self.add_node(slot));
    }

    /// Draws the slot's level (deterministic per slot, so builds repeat)
    /// and gives it room for links on its upper levels; every slot gets one
    /// when room is made for it, so a reused slot keeps its level.
    fn add_node(&mut self, slot: u32) {
        let level = draw_level(slot, self.params.connectivity);
        self.levels[slot as usize] = level;
        if level > 0 {
            let width = self.params.connectivity + 1;
            self.upper_links[slot as usize] = Some(
                (0..level as usize * width)
                    .map(|_| AtomicU32::new(0))
                    .collect(),
            );
        }
    }

    fn entry(&self) -> Option<(u32, u8)> {
        let packed = self.entry.load(Relaxed);
        (packed != NO_ENTRY).then_some(((packed >> 8) as u32, packed as u8))
    }

    /// Links a node whose code is in place: search from the top down for
    /// its nearest nodes, keep a diverse few per level, link both ways.
    fn link(&self, slot: u32) {
        let level = self.levels[slot as usize];
        let Some((entry, top)) = self.entry_or_become_it(slot, level) else {
            return;
        };
        let own = self.code(slot);
        let mut current = self.scored(&own, entry);
        for upper in (level + 1..=top).rev() {
            current = self.greedy(&own, current, upper, true);
        }
        // A reused slot may still sit in its old neighbours' lists; it is
        // never its own neighbour.
        let not_itself = |other: u32| other != slot;
        for at in (0..=level.min(top)).rev() {
            let found = self.search_level(
                &own,
                &[current],
                at,
                self.params.expansion_add,
                true,
                &not_itself,
            );
            let chosen = self.diverse(&found, self.max_links(at));
            {
                let _guard = self.lock(slot);
                store_links(self.links(slot, at), &chosen);
            }
            for &neighbour in &chosen {
                self.link_back(neighbour, slot, at);
            }
            if let Some(&best) = found.first() {
                current = best;
            }
        }
        if level > top {
            let _guard = self
                .entry_lock
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if self.entry().is_none_or(|(_, now)| level > now) {
                self.entry.store(pack_entry(slot, level), Relaxed);
            }
        }
    }

    /// The current entry and top level; `None` if `slot` became the entry
    /// of an empty graph (nothing to link to).
    fn entry_or_become_it(&self, slot: u32, level: u8) -> Option<(u32, u8)> {
        if let Some(entry) = self.entry() {
            return Some(entry);
        }
        let _guard = self
            .entry_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = self.entry() {
            return Some(entry);
        }
        self.entry.store(pack_entry(slot, level), Relaxed);
        None
    }

    /// Adds `slot` to `node`'s links at `level`; a full list keeps the most
    /// diverse of its links plus the new one.
    fn link_back(&self, node: u32, slot: u32, level: u8) {
        let _guard = self.lock(node);
        let links = self.links(node, level);
        let count = links[0].load(Relaxed) as usize;
        let current: Vec<u32> = links[1..=count].iter().map(|l| l.load(Relaxed)).collect();
        if current.contains(&slot) {
            return;
        }
        if count < self.max_links(level) {
            links[count + 1].store(slot, Relaxed);
            links[0].store(count as u32 + 1, Relaxed);
            return;
        }
        let own = self.code(node);
        let mut candidates: Vec<Near> = current
            .iter()
            .chain(std::iter::once(&slot))
            .map(|&other| self.scored(&own, other))
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        let chosen = self.diverse(&candidates, self.max_links(level));
        store_links(links, &chosen);
    }

    /// The HNSW neighbour heuristic: walking candidates from the nearest,
    /// keep one only if it is nearer to the node than to every one kept, so
    /// links spread in all directions instead of into one cluster.
    fn diverse(&self, candidates: &[Near], limit: usize) -> Vec<u32> {
        let mut chosen: Vec<u32> = Vec::with_capacity(limit);
        for candidate in candidates {
            if chosen.len() == limit {
                break;
            }
            let code = self.code(candidate.slot);
            if chosen
                .iter()
                .all(|&kept| self.scored(&code, kept).similarity <= candidate.similarity)
            {
                chosen.push(candidate.slot);
            }
        }
        chosen
    }

    /// Walks to the nearest node on an upper level, one best hop at a time.
    fn greedy(&self, query: &Code, mut current: Near, level: u8, building: bool) -> Near {
        let mut links = Vec::new();
        loop {
            self.read_links(current.slot, level, building, &mut links);
            let best = links
                .iter()
                .map(|&other| self.scored(query, other))
                .max()
                .filter(|best| best.similarity > current.similarity);
            match best {
                Some(best) => current = best,
                None => return current,
            }
        }
    }

    /// Best-first search on one level keeping `expansion` results; nodes
    /// `accept` refuses are walked through but not returned.
    fn search_level(
        &self,
        query: &Code,
        entries: &[Near],
        level: u8,
        expansion: usize,
        building: bool,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<Near> {
        SCRATCH.with(|scratch| {
            let scratch = &mut *scratch.borrow_mut();
            scratch.begin(self.levels.len());
            let mut candidates: BinaryHeap<Near> = BinaryHeap::with_capacity(expansion * 2);
            let mut results: BinaryHeap<Reverse<Near>> = BinaryHeap::with_capacity(expansion + 1);
            for &entry in entries {
                scratch.visit(entry.slot);
                candidates.push(entry);
                if accept(entry.slot) {
                    results.push(Reverse(entry));
                }
            }
            while let Some(nearest) = candidates.pop() {
                let worst = results.peek().map_or(f32::NEG_INFINITY, |w| w.0.similarity);
                if results.len() >= expansion && nearest.similarity < worst {
                    break;
                }
                let mut links = std::mem::take(&mut scratch.links);
                self.read_links(nearest.slot, level, building, &mut links);
                scratch.fresh.clear();
                for &other in &links {
                    if scratch.visit(other) {
                        self.prefetch(other);
                        scratch.fresh.push(other);
                    }
                }
                scratch.links = links;
                for &other in &scratch.fresh {
                    let near = self.scored(query, other);
                    let worst = results.peek().map_or(f32::NEG_INFINITY, |w| w.0.similarity);
                    if results.len() < expansion || near.similarity > worst {
                        candidates.push(near);
                        if accept(other) {
                            results.push(Reverse(near));
                            if results.len() > expansion {
                                results.pop();
                            }
                        }
                    }
                }
            }
            results.into_sorted_vec().into_iter().map(|r| r.0).collect()
        })
    }

    fn max_links(&self, level: u8) -> usize {
        if level == 0 {
            2 * self.params.connectivity
        } else {
            self.params.connectivity
        }
    }

    fn links(&self, slot: u32, level: u8) -> &[AtomicU32] {
        if level == 0 {
            let width = 2 * self.params.connectivity + 1;
            &self.base_links[slot as usize * width..][..width]
        } else {
            let width = self.params.connectivity + 1;
            let upper = self.upper_links[slot as usize]
                .as_deref()
                .expect("links are only read on levels a node has");
            &upper[(level as usize - 1) * width..][..width]
        }
    }

    fn read_links(&self, slot: u32, level: u8, building: bool, out: &mut Vec<u32>) {
        // While building, other threads rewrite lists: copy under the lock.
        let _guard = building.then(|| self.lock(slot));
        let links = self.links(slot, level);
        let count = links[0].load(Relaxed) as usize;
        out.clear();
        out.extend(links[1..=count].iter().map(|l| l.load(Relaxed)));
    }

    fn lock(&self, slot: u32) -> MutexGuard<'_, ()> {
        self.locks[slot as usize]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn code(&self, slot: u32) -> Code<'_> {
        let at = slot as usize * self.dimension;
        Code {
            codes: &self.codes[at..at + self.dimension],
            scale: self.scales[slot as usize],
        }
    }

    fn scored(&self, query: &Code, slot: u32) -> Near {
        let node = self.code(slot);
        Near {
            similarity: (self.dot)(query.codes, node.codes) as f32 * query.scale * node.scale,
            slot,
        }
    }

    /// Asks for a node's code ahead of scoring it, one request per cache line.
    fn prefetch(&self, slot: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let at = slot as usize * self.dimension;
            let code = &self.codes[at..at + self.dimension];
            for line in code.chunks(64) {
                // SAFETY: a prefetch never faults; the address is in bounds.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr()) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }
}

fn store_links(links: &[AtomicU32], chosen: &[u32]) {
    for (link, &slot) in links[1..].iter().zip(chosen) {
        link.store(slot, Relaxed);
    }
    links[0].store(chosen.len() as u32, Relaxed);
}

fn pack_entry(slot: u32, level: u8) -> u64 {
    (slot as u64) << 8 | level as u64
}

/// Quantises `vector` into `codes` with the scale that maps its largest
/// magnitude to 127; returns the scale.
fn quantise(vector: &[f32], codes: &mut [i8]) -> f32 {
    let largest = vector.iter().fold(0f32, |m, x| m.max(x.abs()));
    if largest == 0.0 || !largest.is_finite() {
        codes.fill(0);
        return 0.0;
    }
    let scale = largest / 127.0;
    for (code, x) in codes.iter_mut().zip(vector) {
        *code = (x / scale).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// The node's level: exponentially rarer upwards, `P(level >= l) = M^-l`,
/// drawn from a hash of the slot.
fn draw_level(slot: u32, connectivity: usize) -> u8 {
    let mut x = (slot as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let uniform = ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let level = -uniform.ln() / (connectivity.max(2) as f64).ln();
    (level as u8).min(MAX_LEVEL)
}

/// A vector of `len` items whose pages the kernel is asked to back with
/// huge pages (Linux, where transparent huge pages are on or `madvise`):
/// graph search hops at random through hundreds of megabytes, and with 4
/// KiB pages nearly every hop is also a TLB miss.
fn huge_page_vec<T>(len: usize, fill: impl FnMut() -> T) -> Vec<T> {
    let mut items = Vec::with_capacity(len);
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = items.as_ptr() as usize;
        let end = start + len * std::mem::size_of::<T>();
        let aligned = start.next_multiple_of(HUGE);
        if end > aligned + HUGE {
            // SAFETY: the range lies inside the allocation just made;
            // MADV_HUGEPAGE only changes how its pages are backed.
            unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    (end - aligned) / HUGE * HUGE,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    items.resize_with(len, fill);
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::test_vectors::unit;

    const PARAMS: Params = Params {
        connectivity: 8,
        expansion_add: 64,
        expansion_search: 64,
    };

    #[test]
    fn quantised_similarity_is_close_to_the_exact_one() {
        let (a, b) = (unit(1, 384), unit(2, 384));
        let (mut ca, mut cb) = (vec![0i8; 384], vec![0i8; 384]);
        let (sa, sb) = (quantise(&a, &mut ca), quantise(&b, &mut cb));
        let approx = simd::dot_i8_kernel()(&ca, &cb) as f32 * sa * sb;
        let exact: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((approx - exact).abs() < 0.01, "{approx} vs {exact}");
        assert_eq!(quantise(&[0.0; 4], &mut [1; 4]), 0.0);
    }

    #[test]
    fn levels_thin_out_by_the_connectivity() {
        let levels: Vec<u8> = (0..100_000).map(|s| draw_level(s, 16)).collect();
        let above = levels.iter().filter(|&&l| l >= 1).count();
        // P(level >= 1) = 1/16: 6,250 expected.
        assert!((5_800..6_700).contains(&above), "{above}");
        assert_eq!(
            levels,
            (0..100_000).map(|s| draw_level(s, 16)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn every_node_finds_itself_and_filters_hold() {
        let dimension = 32;
        let vectors: Vec<f32> = (0..3_000).flat_map(|i| unit(i, dimension)).collect();
        let slots: Vec<u32> = (0..3_000).collect();
        // One build thread: a parallel build links nodes in an order that
        // changes from run to run, and so would this count.
        let graph = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| Hnsw::build(dimension, PARAMS, &vectors, &slots));
        let at = |s: u32| &vectors[s as usize * dimension..][..dimension];
        let found = (0..3_000)
            .filter(|&s| graph.search(at(s), 1, &|_| true)[0].slot == s)
            .count();
        assert!(found >= 2_990, "{found} of 3,000 found themselves");
        let even = graph.search(at(7), 10, &|s| s % 2 == 0);
        assert!(even.len() >= 10 && even.iter().all(|n| n.slot % 2 == 0));
        assert!(even.windows(2).all(|w| w[0].similarity >= w[1].similarity));
    }

    #[test]
    fn inserts_after_the_build_and_reused_slots_are_found() {
        let dimension = 16;
        let vectors: Vec<f32> = (0..500).flat_map(|i| unit(i, dimension)).collect();
        let mut graph = Hnsw::build(dimension, PARAMS, &vectors, &(0..500).collect::<Vec<_>>());
        let fresh = unit(10_000, dimension);
        graph.insert(900, &fresh);
        assert_eq!(graph.search(&fresh, 1, &|_| true)[0].slot, 900);
        let replacement = unit(20_000, dimension);
        graph.insert(42, &replacement);
        assert_eq!(graph.search(&replacement, 1, &|_| true)[0].slot, 42);
        assert!(
            Hnsw::build(dimension, PARAMS, &[], &[])
                .search(&fresh, 3, &|_| true)
                .is_empty()
        );
    }
}

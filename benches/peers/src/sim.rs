//! Offline reference policies over key ids, counted in entries (every W3
//! entry has the same size, so entries and bytes are interchangeable).

use crate::workload::Id;
use std::collections::{BinaryHeap, VecDeque};

const NIL: u32 = u32::MAX;

/// Plain LRU: hits over `trace` with room for `cap` entries.
pub fn lru(trace: &[Id], n: usize, cap: usize) -> u64 {
    let (mut prev, mut next) = (vec![NIL; n], vec![NIL; n]);
    let mut present = vec![false; n];
    let (mut head, mut tail, mut len, mut hits) = (NIL, NIL, 0usize, 0u64);
    let unlink =
        |k: u32, prev: &mut Vec<u32>, next: &mut Vec<u32>, head: &mut u32, tail: &mut u32| {
            let (p, nx) = (prev[k as usize], next[k as usize]);
            if p != NIL {
                next[p as usize] = nx
            } else {
                *head = nx
            }
            if nx != NIL {
                prev[nx as usize] = p
            } else {
                *tail = p
            }
        };
    for &k in trace {
        if present[k as usize] {
            hits += 1;
            unlink(k, &mut prev, &mut next, &mut head, &mut tail);
        } else {
            if len == cap {
                let t = tail;
                unlink(t, &mut prev, &mut next, &mut head, &mut tail);
                present[t as usize] = false;
                len -= 1;
            }
            present[k as usize] = true;
            len += 1;
        }
        prev[k as usize] = NIL;
        next[k as usize] = head;
        if head != NIL {
            prev[head as usize] = k;
        }
        head = k;
        if tail == NIL {
            tail = k;
        }
    }
    hits
}

/// Belady's OPT with bypass: on a miss with a full cache, drop whichever of
/// the cached keys and the new key is next used furthest in the future.
pub fn opt(trace: &[Id], n: usize, cap: usize) -> u64 {
    let len = trace.len();
    let mut next_use = vec![usize::MAX; len];
    let mut last = vec![usize::MAX; n];
    for i in (0..len).rev() {
        next_use[i] = last[trace[i] as usize];
        last[trace[i] as usize] = i;
    }
    let mut cur = vec![usize::MAX; n];
    let mut present = vec![false; n];
    let mut heap: BinaryHeap<(usize, Id)> = BinaryHeap::new();
    let (mut size, mut hits) = (0usize, 0u64);
    for i in 0..len {
        let k = trace[i];
        let nu = next_use[i];
        if present[k as usize] {
            hits += 1;
        } else {
            if size == cap {
                // The furthest next use among cached keys (skip stale heap entries).
                let top = loop {
                    let &(t, v) = heap.peek().expect("full cache has a top");
                    if present[v as usize] && cur[v as usize] == t {
                        break (t, v);
                    }
                    heap.pop();
                };
                if nu >= top.0 {
                    continue; // bypass: the new key is the worst one to keep
                }
                heap.pop();
                present[top.1 as usize] = false;
                size -= 1;
            }
            present[k as usize] = true;
            size += 1;
        }
        cur[k as usize] = nu;
        heap.push((nu, k));
    }
    hits
}

/// Reference S3-FIFO (Yang et al. 2023), one unsharded queue set counted in
/// entries, with the engine's rules: small = 10 %, promote from small on
/// any hit (frequency reset), main re-queues with frequency − 1, ghost as
/// large as the cache, a key found in ghost goes straight to main.
pub fn s3fifo(trace: &[Id], n: usize, cap: usize) -> u64 {
    const NONE: u8 = 0;
    const SMALL: u8 = 1;
    const MAIN: u8 = 2;
    let small_target = (cap / 10).max(1);
    let mut state = vec![NONE; n];
    let mut freq = vec![0u8; n];
    let mut ghost_at = vec![u64::MAX; n];
    let mut ghost_pushes = 0u64;
    let (mut small, mut main) = (VecDeque::new(), VecDeque::new());
    let mut hits = 0u64;
    for &k in trace {
        let ku = k as usize;
        if state[ku] != NONE {
            hits += 1;
            freq[ku] = (freq[ku] + 1).min(3);
            continue;
        }
        let in_ghost = ghost_at[ku] != u64::MAX && ghost_pushes - ghost_at[ku] <= cap as u64;
        freq[ku] = 0;
        if in_ghost {
            ghost_at[ku] = u64::MAX;
            state[ku] = MAIN;
            main.push_back(k);
        } else {
            state[ku] = SMALL;
            small.push_back(k);
        }
        while small.len() + main.len() > cap {
            if small.len() > small_target || main.is_empty() {
                let t = small.pop_front().expect("small not empty");
                if freq[t as usize] > 0 {
                    freq[t as usize] = 0;
                    state[t as usize] = MAIN;
                    main.push_back(t);
                } else {
                    state[t as usize] = NONE;
                    ghost_at[t as usize] = ghost_pushes;
                    ghost_pushes += 1;
                }
            } else {
                let t = main.pop_front().expect("main not empty");
                if freq[t as usize] > 0 {
                    freq[t as usize] -= 1;
                    main.push_back(t);
                } else {
                    state[t as usize] = NONE;
                }
            }
        }
    }
    hits
}

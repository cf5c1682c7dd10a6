//! The continuous-batching decision for one step, as a pure function of the running sequences,
//! the waiting queue and the free KV blocks ([`plan`]). The engine applies it.
//!
//! Rules, in order:
//! 1. Sequences that are decoding (one pending token) go first, oldest first, then sequences still
//!    prefilling, oldest first; a step feeds at most `max_step_tokens` tokens, so a long prompt is
//!    prefilled in chunks across steps and running streams keep producing tokens meanwhile.
//! 2. A sequence that needs blocks when too few are free takes the blocks of the youngest running
//!    sequences (preemption by recomputation: a victim goes back to the front of the queue and
//!    re-prefills its tokens later). Only younger sequences are taken from, and only when that
//!    makes enough room, so the oldest always progresses; otherwise the sequence sits the step out.
//!    A victim frees only the blocks no other sequence holds: a block it shares (a prefix, or
//!    the tokens of a sequence it re-prefilled from) stays held, and counting it would preempt
//!    for room that never comes.
//! 3. Waiting requests are admitted first-come first-served while there are sequence slots, step
//!    tokens and free blocks for their whole prompt plus one token; the head of the queue is never
//!    overtaken. A request whose prompt prefix is in the cache counts only the blocks it does not
//!    share with a running sequence.

/// A sequence as the scheduler sees it, running or waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    /// Tokens already in the KV cache (for a waiting request: its cached prompt prefix).
    pub cached: usize,
    /// Tokens to feed before the next token can be sampled (1 when decoding).
    pub pending: usize,
    /// KV blocks held (for a waiting request: cached prefix blocks that another sequence holds,
    /// which cost no free block).
    pub blocks: usize,
    /// Of those, blocks no other sequence holds: what preempting it frees (0 while waiting).
    pub exclusive: usize,
}

/// The limits of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub block_size: usize,
    pub free_blocks: usize,
    /// Most tokens fed through the model in one step.
    pub max_step_tokens: usize,
    /// Most sequences running at once.
    pub max_running: usize,
}

/// What one step does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Tokens each running sequence feeds (index as in `running`); 0 sits the step out.
    pub chunks: Vec<usize>,
    /// Running sequences to preempt, oldest first.
    pub preempt: Vec<usize>,
    /// Tokens fed by each admitted request, from the front of the queue.
    pub admit: Vec<usize>,
}

/// Plans one step. `running` is oldest first; `waiting` is the queue, front first.
pub fn plan(running: &[Running], waiting: &[Running], limits: &Limits) -> Plan {
    let blocks_for = |tokens: usize| tokens.div_ceil(limits.block_size);
    let mut free = limits.free_blocks;
    let mut tokens_left = limits.max_step_tokens;
    let mut chunks = vec![0; running.len()];
    // Blocks each scheduled sequence takes this step, returned if it is preempted later.
    let mut taking = vec![0; running.len()];
    let mut preempted = vec![false; running.len()];
    let decoding = (0..running.len()).filter(|&i| running[i].pending == 1);
    let prefilling = (0..running.len()).filter(|&i| running[i].pending > 1);
    for i in decoding.chain(prefilling) {
        if preempted[i] || tokens_left == 0 {
            continue;
        }
        let sequence = running[i];
        let chunk = sequence.pending.min(tokens_left);
        let need = blocks_for(sequence.cached + chunk).saturating_sub(sequence.blocks);
        let reclaimable: usize =
            (i + 1..running.len()).filter(|&j| !preempted[j]).map(|j| running[j].exclusive + taking[j]).sum();
        if need > free + reclaimable {
            continue;
        }
        while need > free {
            let Some(victim) = (i + 1..running.len()).rev().find(|&j| !preempted[j]) else { break };
            preempted[victim] = true;
            free += running[victim].exclusive + taking[victim];
            tokens_left += chunks[victim];
            chunks[victim] = 0;
            taking[victim] = 0;
        }
        free -= need;
        taking[i] = need;
        chunks[i] = chunk;
        tokens_left -= chunk;
    }
    let mut slots = limits.max_running.saturating_sub(running.len() - preempted.iter().filter(|&&p| p).count());
    let mut admit = Vec::new();
    for request in waiting {
        let whole = blocks_for(request.cached + request.pending + 1).saturating_sub(request.blocks);
        if slots == 0 || tokens_left == 0 || whole > free {
            break;
        }
        let chunk = request.pending.min(tokens_left);
        free -= blocks_for(request.cached + chunk).saturating_sub(request.blocks);
        tokens_left -= chunk;
        slots -= 1;
        admit.push(chunk);
    }
    let preempt = (0..running.len()).filter(|&i| preempted[i]).collect();
    Plan { chunks, preempt, admit }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { block_size: 4, free_blocks: 100, max_step_tokens: 16, max_running: 8 };

    fn decoding(cached: usize) -> Running {
        Running { cached, pending: 1, blocks: cached.div_ceil(4), exclusive: cached.div_ceil(4) }
    }

    fn queued(pending: usize) -> Running {
        Running { cached: 0, pending, blocks: 0, exclusive: 0 }
    }

    #[test]
    fn decodes_go_first_and_a_long_prompt_is_fed_in_chunks() {
        let prefill = Running { cached: 0, pending: 40, blocks: 0, exclusive: 0 };
        let plan = plan(&[prefill, decoding(5), decoding(9)], &[], &LIMITS);
        assert_eq!(plan.chunks, vec![14, 1, 1]);
        assert!(plan.preempt.is_empty());
    }

    #[test]
    fn waiting_requests_join_first_come_first_served_while_room_lasts() {
        let plan = plan(&[decoding(3)], &[queued(10), queued(30), queued(2)], &LIMITS);
        // 15 step tokens left: the first takes 10, the second its first 5 tokens; the third waits
        // because the step has no tokens left.
        assert_eq!(plan.admit, vec![10, 5]);
        let few_blocks = Limits { free_blocks: 3, ..LIMITS };
        let plan = super::plan(&[], &[queued(20), queued(2)], &few_blocks);
        assert!(plan.admit.is_empty(), "the head needs 6 blocks; the short one behind it must not overtake");
        let one_slot = Limits { max_running: 2, ..LIMITS };
        assert_eq!(super::plan(&[decoding(3)], &[queued(2), queued(2)], &one_slot).admit, vec![2]);
    }

    #[test]
    fn a_cached_prefix_held_by_another_sequence_costs_no_blocks() {
        let few_blocks = Limits { free_blocks: 2, ..LIMITS };
        // 20 prompt tokens need 6 blocks with the first sampled one; 16 are cached in 4 blocks.
        let shared = Running { cached: 16, pending: 4, blocks: 4, exclusive: 0 };
        assert_eq!(plan(&[], &[shared], &few_blocks).admit, vec![4]);
        let idle = Running { blocks: 0, ..shared };
        assert!(plan(&[], &[idle], &few_blocks).admit.is_empty(), "idle cached blocks come out of the free ones");
    }

    #[test]
    fn a_decode_without_a_free_block_preempts_the_youngest() {
        let full = Limits { free_blocks: 0, ..LIMITS };
        // Both need a new block (8 and 4 cached tokens fill their blocks exactly).
        let plan = plan(&[decoding(8), decoding(4), decoding(6)], &[], &full);
        assert_eq!(plan.preempt, vec![2], "the youngest goes; its 2 blocks feed the other two");
        assert_eq!(plan.chunks, vec![1, 1, 0]);
    }

    #[test]
    fn blocks_a_victim_shares_are_not_counted_as_room() {
        let full = Limits { free_blocks: 0, ..LIMITS };
        // The younger sequence re-prefilled the older one's tokens: 2 of its 3 blocks are the
        // older one's too, so preempting it frees 1 block.
        let shared = Running { exclusive: 1, ..decoding(12) };
        let plan = plan(&[decoding(8), shared], &[], &full);
        assert_eq!((plan.chunks, plan.preempt), (vec![1, 0], vec![1]), "one block is room enough");
        // A prefill of 8 tokens needs 2 blocks: the one exclusive block is not enough, so
        // nothing is preempted for nothing.
        let prefill = Running { cached: 0, pending: 8, blocks: 0, exclusive: 0 };
        let plan = super::plan(&[prefill, Running { exclusive: 1, ..decoding(11) }], &[], &full);
        assert!(plan.preempt.is_empty(), "{plan:?}");
        assert_eq!(plan.chunks, vec![0, 1]);
    }

    #[test]
    fn the_youngest_sequence_waits_when_it_has_nobody_to_take_from() {
        let full = Limits { free_blocks: 0, ..LIMITS };
        let plan = plan(&[decoding(6), decoding(8)], &[], &full);
        assert_eq!(plan.chunks, vec![1, 0]);
        assert!(plan.preempt.is_empty());
    }

    #[test]
    fn a_preempted_sequence_gives_back_what_it_was_planned_to_take() {
        // The older prefill needs 4 blocks; the decode (planned first) took the only free one.
        let limits = Limits { free_blocks: 1, ..LIMITS };
        let prefill = Running { cached: 0, pending: 16, blocks: 0, exclusive: 0 };
        let plan = plan(&[prefill, decoding(12)], &[], &limits);
        assert_eq!(plan.preempt, vec![1]);
        // The chunk was sized before the decode gave its step token back.
        assert_eq!(plan.chunks, vec![15, 0]);
        // With less to take back, nothing is preempted for nothing: the prefill waits.
        let plan = super::plan(&[prefill, decoding(8)], &[], &limits);
        assert!(plan.preempt.is_empty());
        assert_eq!(plan.chunks, vec![0, 1]);
    }
}

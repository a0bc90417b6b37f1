//! Seed derivation: one experiment seed fans out into independent streams (rows, splits, the initial model, the
//! attackers, each round's training), so that changing one purpose's use never shifts another's numbers.

/// What a derived seed is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The synthetic generator's rows.
    Rows = 1,
    /// The stratified validation split.
    ValidationSplit = 2,
    /// The partition over hospitals.
    Partition = 3,
    /// The initial global model.
    InitialModel = 4,
    /// Which hospitals attack.
    Attackers = 5,
    /// An attack's own seed (index: the hospital).
    Attack = 6,
    /// A hospital's training seed in a round (index: round × 1000 + hospital).
    Training = 7,
    /// The training rows FLTrust's server holds as its root data.
    RootSample = 8,
    /// The server's training seed for its FLTrust update in a round (index: the round).
    RootTraining = 9,
}

/// The seed for `purpose` and `index` under the experiment seed `seed`.
///
/// Each step is SplitMix64's finaliser, a bijection on `u64` with full avalanche, so distinct inputs give
/// unrelated seeds.
pub fn derive(seed: u64, purpose: Purpose, index: u64) -> u64 {
    let mut state = splitmix(seed ^ 0x7064_632d_726f_6273);
    state = splitmix(state ^ purpose as u64);
    splitmix(state ^ index)
}

/// The training seed of hospital `hospital` in round `round`.
pub fn training_seed(seed: u64, round: u32, hospital: usize) -> u64 {
    derive(seed, Purpose::Training, u64::from(round) * 1000 + hospital as u64)
}

/// A seeded permutation of `0..n` (Fisher–Yates over a SplitMix64 stream).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = seed;
    for i in (1..n).rev() {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        // Multiply-shift maps the 64-bit draw onto 0..=i with a bias below 2⁻⁵⁰ for these sizes.
        let j = ((u128::from(splitmix(state)) * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    order
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_permutations_and_seeded() {
        for n in [0, 1, 2, 10, 20] {
            let mut order = permutation(n, 7);
            order.sort_unstable();
            assert_eq!(order, (0..n).collect::<Vec<_>>());
        }
        assert_eq!(permutation(20, 3), permutation(20, 3));
        assert_ne!(permutation(20, 3), permutation(20, 4));
    }

    #[test]
    fn purposes_and_indices_give_distinct_seeds() {
        let seeds = [
            derive(1, Purpose::Rows, 0),
            derive(1, Purpose::Partition, 0),
            derive(2, Purpose::Rows, 0),
            derive(1, Purpose::Attack, 1),
            training_seed(1, 1, 2),
            training_seed(1, 2, 1),
        ];
        for (i, a) in seeds.iter().enumerate() {
            for b in &seeds[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}

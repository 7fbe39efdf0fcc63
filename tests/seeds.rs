mod common;

use mmengine::io::safetensors::SafeTensors;
use mmengine::seeds::{parse_seeds, z_from_seed, RandomState, MAX_SEEDS};

fn golden() -> SafeTensors {
    SafeTensors::open(common::golden("seeds", "numpy_randn.safetensors")).unwrap()
}

#[test]
fn randn_matches_numpy_f64_and_f32() {
    let st = golden();
    let (_, seeds) = st.tensor_i64("seeds").unwrap();
    assert_eq!(seeds, [0, 1, 2, 3, 42, 1000, 123456, 4294967295]);
    for dim in [64usize, 512] {
        let (shape, want64) = st.tensor_f64(&format!("z_dim{dim}_f64")).unwrap();
        assert_eq!(shape, [seeds.len(), dim]);
        let want32 = st.tensor(&format!("z_dim{dim}")).unwrap();
        for (row, &seed) in seeds.iter().enumerate() {
            let seed = u32::try_from(seed).unwrap();
            let mut rng = RandomState::new(seed);
            for (i, &want) in want64[row * dim..(row + 1) * dim].iter().enumerate() {
                let got = rng.randn();
                assert!(
                    got == want || (got - want).abs() <= 1e-15 * want.abs(),
                    "seed {seed} dim {dim} element {i}: got {got:e}, numpy {want:e}"
                );
            }
            let z = z_from_seed(seed, dim);
            let want = &want32.data[row * dim..(row + 1) * dim];
            assert_eq!(z.len(), dim);
            for (i, (g, w)) in z.iter().zip(want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "seed {seed} dim {dim} f32 element {i}"
                );
            }
        }
    }
}

#[test]
fn shorter_z_is_a_prefix() {
    // randn(n) draws in order, so a smaller z_dim is the head of a larger one (pairs are split across the end).
    let long = z_from_seed(7, 513);
    assert_eq!(z_from_seed(7, 3), long[..3]);
    assert_eq!(z_from_seed(7, 0), Vec::<f32>::new());
}

#[test]
fn random_f64_is_in_unit_interval() {
    let mut rng = RandomState::new(4294967295);
    for _ in 0..10_000 {
        let u = rng.random_f64();
        assert!((0.0..1.0).contains(&u));
    }
}

#[test]
fn parse_lists_and_ranges() {
    assert_eq!(
        parse_seeds("0-7,12,20-23").unwrap(),
        [0, 1, 2, 3, 4, 5, 6, 7, 12, 20, 21, 22, 23]
    );
    assert_eq!(parse_seeds("42").unwrap(), [42]);
    assert_eq!(parse_seeds(" 5 , 3-4 ,1 ").unwrap(), [5, 3, 4, 1]);
    assert_eq!(parse_seeds("3 - 3").unwrap(), [3]);
    assert_eq!(parse_seeds("2,2").unwrap(), [2, 2]);
    assert_eq!(parse_seeds("4294967295").unwrap(), [u32::MAX]);
    assert_eq!(
        parse_seeds("4294967294-4294967295").unwrap(),
        [u32::MAX - 1, u32::MAX]
    );
}

#[test]
fn parse_errors_are_clear() {
    let err = |s: &str| parse_seeds(s).unwrap_err().to_string();
    assert!(err("").contains("empty seed list"));
    assert!(err("1,,2").contains("empty item"));
    assert!(err("1,").contains("empty item"));
    assert!(err("abc").contains("'abc'"));
    assert!(err("-3").contains("not a non-negative integer"));
    assert!(err("1.5").contains("'1.5'"));
    assert!(err("1-2-3").contains("'2-3'"));
    let e = err("7-3");
    assert!(e.contains("reversed") && e.contains("7-3"), "{e}");
    let e = err("4294967296");
    assert!(
        e.contains("out of range") && e.contains("4294967296"),
        "{e}"
    );
    assert!(err("0-99999999999").contains("out of range"));
    assert!(err("0-4294967295").contains(&format!("more than {MAX_SEEDS}")));
    let many = format!("0-{},5", MAX_SEEDS - 1);
    assert!(err(&many).contains("more than"));
    assert_eq!(
        parse_seeds(&format!("0-{}", MAX_SEEDS - 1)).unwrap().len(),
        MAX_SEEDS
    );
}

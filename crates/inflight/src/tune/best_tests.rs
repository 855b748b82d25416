//! One table of synthetic rate curves, each row giving all three answers of the one rule: the run's and bench's
//! best level (5% band), bench's with the server's busy count as a cap, and doctor's effective lanes (15% band,
//! capped), plus whether the curve is a serialized server.

use super::*;

/// The levels every curve is measured at.
const LEVELS: [usize; 6] = [1, 2, 4, 8, 16, 32];

struct Row {
    name: &'static str,
    /// Rate at each of [`LEVELS`].
    rates: [f64; 6],
    /// The most requests the server reported busy at once.
    busy: Option<usize>,
    /// The run's and bench's answer without the server's evidence.
    run: usize,
    /// Bench's answer with the busy cap.
    bench: usize,
    /// Doctor's effective lanes.
    doctor: usize,
    serialized: bool,
}

const TABLE: &[Row] = &[
    Row {
        name: "serial: flat from 1",
        rates: [10.0, 10.4, 10.2, 10.1, 10.0, 9.9],
        busy: Some(1),
        run: 1,
        bench: 1,
        doctor: 1,
        serialized: true,
    },
    Row {
        name: "4 lanes, flat after 4",
        rates: [10.0, 19.5, 38.0, 39.0, 38.5, 39.2],
        busy: Some(4),
        run: 4,
        bench: 4,
        doctor: 4,
        serialized: false,
    },
    Row {
        name: "batching knee at 16",
        rates: [10.0, 20.0, 39.0, 75.0, 140.0, 146.0],
        busy: Some(32),
        run: 16,
        bench: 16,
        doctor: 16,
        serialized: false,
    },
    Row {
        name: "noisy plateau, no busy count: the probe's wider band stops earlier",
        rates: [10.0, 19.0, 37.0, 41.0, 43.0, 40.0],
        busy: None,
        run: 8,
        bench: 8,
        doctor: 4,
        serialized: false,
    },
    Row {
        name: "busy 8: 16 and 32 gain only within the noise",
        rates: [10.0, 20.0, 40.0, 70.0, 75.0, 76.0],
        busy: Some(8),
        run: 16,
        bench: 8,
        doctor: 8,
        serialized: false,
    },
    Row {
        name: "busy 4: noise makes 8 look 8% faster",
        rates: [10.0, 19.0, 36.0, 39.0, 38.0, 37.0],
        busy: Some(4),
        run: 8,
        bench: 4,
        doctor: 4,
        serialized: false,
    },
    Row {
        name: "busy 8, but 32 is clearly faster than 8",
        rates: [10.0, 20.0, 40.0, 70.0, 84.0, 100.0],
        busy: Some(8),
        run: 32,
        bench: 32,
        doctor: 8,
        serialized: false,
    },
];

fn points(row: &Row) -> Vec<(usize, f64)> {
    LEVELS.iter().copied().zip(row.rates).collect()
}

/// A closed loop's latency at each level, by Little's law (in flight ÷ rate).
fn measured(level: usize, rate: f64) -> Measured {
    Measured { level, rate, latency: level as f64 / rate }
}

#[test]
fn one_table_gives_the_run_bench_and_doctor_answers() {
    for row in TABLE {
        let p = points(row);
        assert_eq!(best_level(&p, Band::RUN, None), Some(row.run), "run: {}", row.name);
        assert_eq!(best_level(&p, Band::RUN, row.busy), Some(row.bench), "bench: {}", row.name);
        assert_eq!(effective_lanes(&p, row.busy), Some(row.doctor), "doctor: {}", row.name);
        let best = p.iter().map(|(_, r)| *r).fold(0.0, f64::max);
        let one = measured(1, row.rates[0]);
        let top = measured(32, row.rates[5]);
        assert_eq!(serialized(one, best, top), row.serialized, "serialized: {}", row.name);
    }
}

#[test]
fn bands_and_clear_gains() {
    assert_eq!(Band::RUN.fraction(), 0.05);
    assert_eq!(Band::PROBE.fraction(), 0.15);
    assert!(Band::RUN.within(95.5, 100.0) && !Band::RUN.within(94.0, 100.0));
    // Clear of the noise of both measurements: 5% each way.
    assert!(!Band::RUN.clearly_above(110.0, 100.0) && Band::RUN.clearly_above(111.0, 100.0));
}

#[test]
fn no_points_no_answer_and_a_zero_busy_count_is_no_evidence() {
    assert_eq!(best_level(&[], Band::RUN, Some(4)), None);
    let row = &TABLE[4];
    assert_eq!(best_level(&points(row), Band::RUN, Some(0)), Some(row.run));
    assert_eq!(effective_lanes(&points(row), Some(0)), best_level(&points(row), Band::PROBE, None));
}

#[test]
fn a_cap_below_every_level_or_above_them_all_changes_nothing() {
    let p = [(4, 40.0), (8, 70.0), (16, 75.0)];
    assert_eq!(best_level(&p, Band::RUN, Some(2)), Some(16), "nothing measured at or below the cap");
    assert_eq!(best_level(&p, Band::RUN, Some(64)), Some(16), "nothing measured above it");
}

#[test]
fn equal_levels_go_to_the_first_in_the_slice() {
    // An embeddings matrix: inputs in flight, ordered by fewest requests first.
    let p = [(4, 100.0), (8, 99.0), (8, 100.0), (16, 101.0)];
    assert_eq!(pick(&p, Band::RUN, None), Some(0));
    let p = [(8, 99.0), (8, 100.0), (4, 80.0)];
    assert_eq!(pick(&p, Band::RUN, None), Some(0));
}

#[test]
fn the_band_is_the_median_spread_of_the_levels_windows_between_5_and_15_percent() {
    assert_eq!(spread(&[90.0, 110.0]), 0.1);
    assert_eq!(spread(&[100.0]), 0.0, "one window shows no spread");
    assert_eq!(Band::measured(Band::RUN, []), Band::RUN, "nothing measured: the floor");
    assert_eq!(Band::measured(Band::RUN, [0.01, 0.02, 0.03]), Band::RUN, "steady windows: the floor");
    assert_eq!(Band::measured(Band::RUN, [0.02, 0.08, 0.09]).fraction(), 0.08);
    assert_eq!(Band::measured(Band::RUN, [0.02, 0.03, 0.5]), Band::RUN, "one disturbed level widens nothing");
    assert_eq!(Band::measured(Band::RUN, [0.4, 0.5]), Band::PROBE, "never wider than the probe's band");
}

#[test]
fn a_server_that_never_ran_two_at_once_is_serialized_without_the_latency_growth() {
    // Latency at 8 grew only 3× (client-side queueing hides part of it on a busy machine): not enough alone.
    let one = Measured { level: 1, rate: 10.0, latency: 1.0 };
    let top = Measured { level: 8, rate: 10.5, latency: 3.0 };
    assert!(!serialized(one, 10.5, top));
    assert!(!serialized_with(one, 10.5, top, Some(2)), "the server ran two at once");
    assert!(!serialized_with(one, 10.5, top, Some(0)), "a reading of 0 is no evidence");
    assert!(serialized_with(one, 10.5, top, Some(1)));
    assert!(serialized_with(one, 20.0, top, Some(1)), "its own count, though a second request hid the round trip");
}

//! The `synthetic` source: programmatic tasks whose answers are computed,
//! so every example is correct by construction. Each family draws its
//! numbers, words and templates from the example's own random generator:
//! the same (seed, index) always gives the same example.

use rand::{Rng, rngs::StdRng, seq::IndexedRandom};

use crate::Example;

/// Every family, drawn with equal weight.
pub const FAMILIES: [&str; 8] = [
    "arithmetic",
    "unit_conversion",
    "dates",
    "lists",
    "json_extraction",
    "strings",
    "sql",
    "code_tracing",
];

/// One example of a family picked by `rng`.
pub fn generate(rng: &mut StdRng) -> Example {
    match rng.random_range(0..FAMILIES.len()) {
        0 => arithmetic(rng),
        1 => unit_conversion(rng),
        2 => dates(rng),
        3 => lists(rng),
        4 => json_extraction(rng),
        5 => strings(rng),
        6 => sql(rng),
        _ => code_tracing(rng),
    }
}

fn example(family: &str, instruction: String, input: String, output: String) -> Example {
    Example {
        source: "synthetic".into(),
        family: family.into(),
        instruction,
        input,
        output,
    }
}

const NAMES: [&str; 16] = [
    "Alice", "Bruno", "Chen", "Dana", "Emeka", "Fatima", "Goran", "Hana", "Ivan", "Jun", "Kofi",
    "Lena", "Mateo", "Nia", "Omar", "Priya",
];
const SURNAMES: [&str; 12] = [
    "Smith", "Okafor", "Novak", "Tanaka", "Garcia", "Haddad", "Kowalski", "Silva", "Müller",
    "Nguyen", "Rossi", "Patel",
];
const WORDS: [&str; 96] = [
    "apple", "river", "stone", "cloud", "maple", "tiger", "ember", "harbor", "violet", "quartz",
    "meadow", "falcon", "lantern", "pepper", "glacier", "orbit", "saddle", "willow", "copper",
    "thunder", "canyon", "pixel", "raven", "silk", "anchor", "bamboo", "cactus", "dolphin",
    "eclipse", "fern", "garnet", "hazel", "iris", "jasmine", "kettle", "lemon", "marble", "nectar",
    "oasis", "pebble", "quill", "rocket", "sparrow", "tundra", "umbra", "velvet", "walnut",
    "yarrow", "zephyr", "acorn", "basil", "cobalt", "dune", "ermine", "fjord", "ginger", "heron",
    "indigo", "juniper", "kelp", "lilac", "mango", "nutmeg", "opal", "plum", "quince", "reef",
    "sage", "thistle", "urchin", "vortex", "wren", "yew", "zinc", "amber", "birch", "coral",
    "delta", "emerald", "flint", "gravel", "hollow", "ivory", "jade", "kiln", "lagoon", "mist",
    "nova", "onyx", "prairie", "ridge", "slate", "tide", "valley", "wharf", "summit",
];
const CITIES: [&str; 10] = [
    "Lisbon", "Nairobi", "Osaka", "Quito", "Tallinn", "Accra", "Hobart", "Tromsø", "Cusco", "Varna",
];

fn pick<'a>(rng: &mut StdRng, items: &'a [&'a str]) -> &'a str {
    items.choose(rng).copied().unwrap_or_default()
}

fn arithmetic(rng: &mut StdRng) -> Example {
    let a: i64 = rng.random_range(2..100_000);
    let b: i64 = rng.random_range(2..10_000);
    let (question, answer) = match rng.random_range(0..5) {
        0 => (format!("What is {a} + {b}?"), (a + b).to_string()),
        1 => (format!("What is {a} − {b}?"), (a - b).to_string()),
        2 => (format!("What is {a} × {b}?"), (a * b).to_string()),
        3 => (
            format!("Divide {a} by {b}. Give the quotient and the remainder."),
            format!("quotient {}, remainder {}", a / b, a % b),
        ),
        _ => {
            let percent = rng.random_range(1..100);
            (
                format!("What is {percent}% of {a}? Round to two decimals."),
                format!("{:.2}", a as f64 * percent as f64 / 100.0),
            )
        }
    };
    example(
        "arithmetic",
        "Compute the answer. Reply with the result only.".into(),
        question,
        answer,
    )
}

fn unit_conversion(rng: &mut StdRng) -> Example {
    let value = rng.random_range(1..1_000_000) as f64 / 100.0;
    let (from, to, factor, offset) = *[
        ("kilometres", "metres", 1000.0, 0.0),
        ("kilograms", "grams", 1000.0, 0.0),
        ("hours", "minutes", 60.0, 0.0),
        ("inches", "centimetres", 2.54, 0.0),
        ("miles", "kilometres", 1.609344, 0.0),
        ("degrees Celsius", "degrees Fahrenheit", 1.8, 32.0),
        ("litres", "millilitres", 1000.0, 0.0),
        ("pounds", "kilograms", 0.45359237, 0.0),
    ]
    .choose(rng)
    .expect("units");
    example(
        "unit_conversion",
        format!("Convert {from} to {to}. Round to two decimals and give the unit."),
        format!("{value} {from}"),
        format!("{:.2} {to}", value * factor + offset),
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn iso(days: i64) -> String {
    let (y, m, d) = civil(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The day of the week of a day counted from 1970-01-01 (a Thursday).
fn weekday(days: i64) -> &'static str {
    const WEEKDAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    WEEKDAYS[days.rem_euclid(7) as usize]
}

fn dates(rng: &mut StdRng) -> Example {
    let start = rng.random_range(0..80_000);
    let delta = rng.random_range(1..5_000);
    if rng.random_bool(0.5) {
        example(
            "dates",
            "Answer with a date in YYYY-MM-DD form.".into(),
            format!("What date is {delta} days after {}?", iso(start)),
            iso(start + delta),
        )
    } else {
        example(
            "dates",
            "Answer with the day of the week only.".into(),
            format!(
                "Which day of the week is {delta} days after {}?",
                iso(start)
            ),
            weekday(start + delta).into(),
        )
    }
}

fn lists(rng: &mut StdRng) -> Example {
    let len = rng.random_range(5..12);
    let numbers: Vec<i64> = (0..len).map(|_| rng.random_range(-500..1_000)).collect();
    let shown = |items: &[i64]| {
        items
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match rng.random_range(0..4) {
        0 => {
            let mut sorted = numbers.clone();
            sorted.sort_unstable();
            example(
                "lists",
                "Sort the numbers in ascending order. Reply with the list only.".into(),
                format!("[{}]", shown(&numbers)),
                format!("[{}]", shown(&sorted)),
            )
        }
        1 => {
            let evens: Vec<i64> = numbers.iter().copied().filter(|n| n % 2 == 0).collect();
            example(
                "lists",
                "Keep only the even numbers, in their order. Reply with the list only.".into(),
                format!("[{}]", shown(&numbers)),
                format!("[{}]", shown(&evens)),
            )
        }
        2 => {
            let threshold = rng.random_range(0..500);
            let above = numbers.iter().filter(|n| **n > threshold).count();
            example(
                "lists",
                format!("How many numbers are greater than {threshold}? Reply with a number."),
                format!("[{}]", shown(&numbers)),
                above.to_string(),
            )
        }
        _ => {
            let mut words: Vec<&str> = (0..len.min(8)).map(|_| pick(rng, &WORDS)).collect();
            let input = words.join(", ");
            words.sort_unstable();
            words.dedup();
            example(
                "lists",
                "Sort these words alphabetically and remove repeats. Reply with a comma-separated list."
                    .into(),
                input,
                words.join(", "),
            )
        }
    }
}

fn json_extraction(rng: &mut StdRng) -> Example {
    let order: u32 = rng.random_range(10_000..1_000_000);
    let customer = format!("{} {}", pick(rng, &NAMES), pick(rng, &SURNAMES));
    let items: u32 = rng.random_range(1..40);
    let cents: u64 = rng.random_range(100..5_000_000);
    let date = iso(rng.random_range(18_000..21_000));
    let city = pick(rng, &CITIES);
    let text = match rng.random_range(0..3) {
        0 => format!(
            "Order {order} was placed by {customer} on {date} for {items} items, \
             {:.2} EUR in all, shipped to {city}.",
            cents as f64 / 100.0
        ),
        1 => format!(
            "On {date}, {customer} from {city} bought {items} items (order #{order}) \
             and paid {:.2} EUR.",
            cents as f64 / 100.0
        ),
        _ => format!(
            "Shipping note — city: {city}; customer: {customer}; order no. {order}; \
             date {date}; {items} items; total {:.2} EUR.",
            cents as f64 / 100.0
        ),
    };
    let json = serde_json::json!({
        "order_id": order,
        "customer": customer,
        "date": date,
        "items": items,
        "total_eur": format!("{:.2}", cents as f64 / 100.0),
        "city": city,
    });
    example(
        "json_extraction",
        "Extract order_id, customer, date, items, total_eur (as a string) and city as one JSON object."
            .into(),
        text,
        json.to_string(),
    )
}

fn strings(rng: &mut StdRng) -> Example {
    let count = rng.random_range(3..8);
    let words: Vec<&str> = (0..count).map(|_| pick(rng, &WORDS)).collect();
    let phrase = words.join(" ");
    match rng.random_range(0..4) {
        0 => example(
            "strings",
            "Reverse the characters of the text. Reply with the result only.".into(),
            phrase.clone(),
            phrase.chars().rev().collect(),
        ),
        1 => {
            let vowels = phrase.chars().filter(|c| "aeiou".contains(*c)).count();
            example(
                "strings",
                "How many vowels (a, e, i, o, u) does the text have? Reply with a number.".into(),
                phrase,
                vowels.to_string(),
            )
        }
        2 => example(
            "strings",
            "Turn the text into snake_case in capital letters (words joined by underscores)."
                .into(),
            phrase.clone(),
            words.join("_").to_uppercase(),
        ),
        _ => {
            let numbers: Vec<u32> = (0..count).map(|_| rng.random_range(1..10_000)).collect();
            let text = words
                .iter()
                .zip(&numbers)
                .map(|(w, n)| format!("{w} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let found = numbers
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            example(
                "strings",
                "List every number in the text (as the regex \\d+ would find them), comma-separated."
                    .into(),
                text,
                found,
            )
        }
    }
}

fn sql(rng: &mut StdRng) -> Example {
    let rows: Vec<(&str, u32, &str)> = (0..rng.random_range(4..9))
        .map(|_| {
            (
                pick(rng, &NAMES),
                rng.random_range(18..80),
                pick(rng, &CITIES),
            )
        })
        .collect();
    let table = rows
        .iter()
        .map(|(name, age, city)| format!("| {name} | {age} | {city} |"))
        .collect::<Vec<_>>()
        .join("\n");
    let input = format!("Table people:\n| name | age | city |\n{table}");
    let threshold = rng.random_range(20..70);
    if rng.random_bool(0.5) {
        let mut names: Vec<&str> = rows
            .iter()
            .filter(|r| r.1 > threshold)
            .map(|r| r.0)
            .collect();
        names.sort_unstable();
        example(
            "sql",
            format!(
                "Give the result of: SELECT name FROM people WHERE age > {threshold} ORDER BY name. \
                 One name per line; write (none) if empty."
            ),
            input,
            if names.is_empty() {
                "(none)".into()
            } else {
                names.join("\n")
            },
        )
    } else {
        let matching: Vec<u32> = rows
            .iter()
            .filter(|r| r.1 > threshold)
            .map(|r| r.1)
            .collect();
        example(
            "sql",
            format!(
                "Give the result of: SELECT COUNT(*), SUM(age) FROM people WHERE age > {threshold}. \
                 Reply as: count, sum."
            ),
            input,
            format!("{}, {}", matching.len(), matching.iter().sum::<u32>()),
        )
    }
}

fn code_tracing(rng: &mut StdRng) -> Example {
    let start: i64 = rng.random_range(0..1_000);
    let times: i64 = rng.random_range(2..9);
    let multiplier: i64 = rng.random_range(1..6);
    let add: i64 = rng.random_range(-50..51);
    let modulus: i64 = rng.random_range(7..1_000);
    let (code, x) = if rng.random_bool(0.5) {
        let mut x = start;
        for i in 0..times {
            x = x * multiplier + i + add;
        }
        let code = format!(
            "x = {start}\nfor i in range({times}):\n    x = x * {multiplier} + i + ({add})\nprint(x)"
        );
        (code, x)
    } else {
        let mut x = start;
        for i in 0..times {
            x = (x * multiplier + add).rem_euclid(modulus) + i;
        }
        let code = format!(
            "x = {start}\nfor i in range({times}):\n    x = (x * {multiplier} + ({add})) % {modulus} + i\nprint(x)"
        );
        (code, x)
    };
    example(
        "code_tracing",
        "What does this Python program print? Reply with the output only.".into(),
        code,
        x.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn dates_match_known_days() {
        assert_eq!(iso(0), "1970-01-01");
        assert_eq!(iso(19_723), "2024-01-01");
        assert_eq!(iso(19_782), "2024-02-29");
        assert_eq!(iso(-1), "1969-12-31");
    }

    #[test]
    fn every_family_is_generated_and_answers_are_computed() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2_000 {
            let example = generate(&mut rng);
            assert!(!example.output.is_empty(), "{example:?}");
            if example.family == "arithmetic" && example.input.contains(" + ") {
                let parts: Vec<i64> = example
                    .input
                    .trim_start_matches("What is ")
                    .trim_end_matches('?')
                    .split(" + ")
                    .map(|n| n.parse().unwrap())
                    .collect();
                assert_eq!(example.output, (parts[0] + parts[1]).to_string());
            }
            seen.insert(example.family.clone());
        }
        assert_eq!(seen.len(), FAMILIES.len(), "{seen:?}");
    }

    #[test]
    fn weekdays_count_from_a_1970_thursday() {
        assert_eq!(weekday(0), "Thursday");
        assert_eq!(weekday(19_723), "Monday"); // 2024-01-01
        assert_eq!(weekday(-1), "Wednesday");
    }
}

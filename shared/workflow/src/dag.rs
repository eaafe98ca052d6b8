//! Task graphs: dependency checks shared by the patterns file and
//! model-written plans.

/// Most tasks one workflow may have.
pub const MAX_TASKS: usize = 16;

/// Resolves named dependencies (`tasks` as (name, names it depends on)) to
/// indexes, checking that names are unique, every dependency exists and the
/// graph has no cycle.
pub fn resolve<'a>(
    tasks: impl Iterator<Item = (&'a str, &'a [String])> + Clone,
) -> Result<Vec<Vec<usize>>, String> {
    let mut index = std::collections::HashMap::new();
    for (i, (name, _)) in tasks.clone().enumerate() {
        if index.insert(name, i).is_some() {
            return Err(format!("task name {name} is used twice"));
        }
    }
    let deps = tasks
        .map(|(name, needs)| {
            needs
                .iter()
                .map(|d| {
                    index
                        .get(d.as_str())
                        .copied()
                        .ok_or_else(|| format!("task {name}: unknown dependency {d}"))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    topological_order(&deps)?;
    Ok(deps)
}

/// Checks that `deps[i]` (indexes task `i` needs) form a DAG and returns an
/// order in which every task comes after its dependencies.
pub fn topological_order(deps: &[Vec<usize>]) -> Result<Vec<usize>, String> {
    let n = deps.len();
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut children = vec![Vec::new(); n];
    for (task, needs) in deps.iter().enumerate() {
        for &parent in needs {
            if parent >= n {
                return Err(format!("task {task} depends on unknown task {parent}"));
            }
            if parent == task {
                return Err(format!("task {task} depends on itself"));
            }
            children[parent].push(task);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&t| waiting[t] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(task) = ready.pop() {
        order.push(task);
        for &child in &children[task] {
            waiting[child] -= 1;
            if waiting[child] == 0 {
                ready.push(child);
            }
        }
    }
    if order.len() != n {
        return Err("the task graph has a cycle".into());
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_a_diamond_and_refuses_cycles() {
        let diamond = vec![vec![], vec![0], vec![0], vec![1, 2]];
        let order = topological_order(&diamond).unwrap();
        let pos = |t| order.iter().position(|&x| x == t).unwrap();
        assert!(pos(0) < pos(1) && pos(1) < pos(3) && pos(2) < pos(3));
        assert!(
            topological_order(&[vec![1], vec![0]])
                .unwrap_err()
                .contains("cycle")
        );
        assert!(
            topological_order(&[vec![0]])
                .unwrap_err()
                .contains("itself")
        );
        assert!(
            topological_order(&[vec![5]])
                .unwrap_err()
                .contains("unknown")
        );
    }
}

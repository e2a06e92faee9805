"""`sie-bench tasks`: every text task of the installed mteb, plus the project's own tasks."""

from pathlib import Path

from sie_evals.lib.tasks.mteb_tasks import local_folder, mteb_version, subsets, text_tasks
from sie_evals.lib.tasks.registry import registered_tasks


def list_tasks(task_type: str | None, search: str | None, data_root: Path | None) -> list[str]:
    native_by_mteb = {s.mteb_name: s for s in registered_tasks() if s.mteb_name}
    lines = []
    for spec in registered_tasks():
        if task_type or search:
            break
        aliases = f" (alias {', '.join(spec.aliases)})" if spec.aliases else ""
        lines.append(
            f"{spec.task_id}{aliases}: {spec.type}, splits {', '.join(spec.rules.eval_splits)}, "
            f"main score {spec.rules.main_score}, data {spec.local_dir}/"
            + (f" or hf:{spec.hf_dataset}" if spec.hf_dataset else "")
            + " [native]"
        )
    needle = (search or "").lower()
    count = 0
    for task in sorted(text_tasks(), key=lambda t: t.metadata.name):
        m = task.metadata
        if task_type and m.type.lower() != task_type.lower():
            continue
        if needle and needle not in m.name.lower() and needle not in (m.description or "").lower():
            continue
        native = native_by_mteb.get(m.name)
        subs = subsets(task)
        local = [s for s in subs if local_folder(task, s, data_root, native.local_dir if native else None)]
        langs = ",".join(m.languages[:6]) + ("..." if len(m.languages) > 6 else "")
        marks = (" [native]" if native else "") + (f" [local: {','.join(local)}]" if local else "")
        shown = ",".join(subs[:8]) + (f"... ({len(subs)})" if len(subs) > 8 else "")
        lines.append(
            f"mteb/{m.name}: {m.type}, main score {m.main_score}, splits {','.join(m.eval_splits)}, "
            f"languages {langs}" + (f", subsets {shown}" if subs != ["default"] else "") + marks
        )
        count += 1
    lines.append(f"{count} MTEB text task(s) (mteb {mteb_version()}); run one with -t mteb/<TaskName>[/<subset>]")
    return lines

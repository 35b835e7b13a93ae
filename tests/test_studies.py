"""optuna.db survives being damaged at any moment of storing a study."""

from __future__ import annotations

import optuna

from vibeserve_ray.search.studies import STUDIES_FILE, save_study, storage_url

KNOB = optuna.distributions.distribution_to_json(optuna.distributions.IntDistribution(1, 64))


def _trials(n: int) -> list[dict]:
    return [{"knobs": {"max_num_seqs": 8 * (i + 1)}, "distributions": {"max_num_seqs": KNOB}, "value": 10.0 + i,
             "slo_passed": True} for i in range(n)]


def test_a_study_is_stored_once_with_its_trials_in_order(tmp_path):
    assert save_study(tmp_path, "island-0:abc", "maximize", _trials(3))
    assert save_study(tmp_path, "island-0:abc", "maximize", _trials(3))  # a resumed driver records again
    study = optuna.load_study(study_name="island-0:abc", storage=storage_url(tmp_path))
    assert [t.value for t in study.trials] == [10.0, 11.0, 12.0]
    assert [t.params["max_num_seqs"] for t in study.trials] == [8, 16, 24]


def test_damage_between_creating_the_study_and_adding_its_trials_sets_the_file_aside(tmp_path, monkeypatch):
    assert save_study(tmp_path, "island-0:first", "maximize", _trials(1))
    add_trial = optuna.Study.add_trial

    def damaged_meanwhile(self, trial):
        (tmp_path / STUDIES_FILE).write_bytes(b"not a database " * 100)
        return add_trial(self, trial)

    monkeypatch.setattr(optuna.Study, "add_trial", damaged_meanwhile)
    assert save_study(tmp_path, "island-0:second", "maximize", _trials(2)) is False  # the caller rebuilds from the notes
    assert list(tmp_path.glob(f"{STUDIES_FILE}.unreadable-*"))
    monkeypatch.setattr(optuna.Study, "add_trial", add_trial)
    assert save_study(tmp_path, "island-0:second", "maximize", _trials(2))
    assert optuna.get_all_study_names(storage_url(tmp_path)) == ["island-0:second"]

"""The test node's projected-token files: which env values of a container point at a mounted token file."""

from __future__ import annotations

from pathlib import Path

from lorasweep_operator import planning, rendering
from lorasweep_operator.devcluster.node_agent import Agent
from lorasweep_operator.spec import parse_spec


def test_a_rendered_trials_token_path_maps_to_the_file_the_agent_wrote(tmp_path: Path) -> None:
    spec = parse_spec(
        {
            "image": "trainer:1",
            "dataset": {"source": "s3://b/clips/"},
            "storage": {"output": "s3://b/out/"},
            "search": {"list": [{"learningRate": 1e-3}]},
            "earlyStopping": {"algorithm": "asha"},
        }
    )
    (trial,) = planning.plan(spec, "s")
    job = rendering.render_job(spec, "ns", "s", "uid", trial, "http://127.0.0.1:8082/v1/progress")
    pod = {"spec": job["spec"]["template"]["spec"]}
    (container,) = pod["spec"]["containers"]
    written = tmp_path / "volumes" / rendering.PROGRESS_VOLUME / "token"
    paths = Agent.mounted_token_paths(container, pod, {rendering.PROGRESS_VOLUME: written})
    assert paths == {f"{rendering.PROGRESS_MOUNT}/{rendering.PROGRESS_TOKEN_FILE}": str(written)}
    env = {item["name"]: item["value"] for item in container["env"]}
    assert paths[env["LORASWEEP_PROGRESS_TOKEN"]] == str(written)
    # A container that does not mount the volume gets nothing rewritten.
    assert Agent.mounted_token_paths({**container, "volumeMounts": []}, pod, {rendering.PROGRESS_VOLUME: written}) == {}

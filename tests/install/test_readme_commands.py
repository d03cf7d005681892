"""README's cluster section is what tests/install runs: the commands it extracts must be
ones the test's kubectl and helm can run, name files that exist, and render the chart.

Fast (no cluster): a README edit that the install test could not follow fails here first.
"""

from __future__ import annotations

from install_support import ROOT, _deep_merge, _helm_parser, readme_steps, render


def test_readme_has_the_five_steps_the_install_test_runs() -> None:
    steps = readme_steps()
    assert sorted(steps) == [1, 2, 3, 4, 5]
    assert steps[1] == [["kubectl", "apply", "--server-side", "-f", "crds/"]]
    assert steps[4][0] == steps[1][0]  # CRDs first on every upgrade
    assert [c[:2] for c in steps[2]] == [["helm", "install"]]
    assert [c[:2] for c in steps[4][1:]] == [["helm", "upgrade"]]
    assert steps[5][-1][:2] == ["helm", "uninstall"]
    assert all(c[0] in ("kubectl", "helm") for step in steps.values() for c in step)


def test_every_file_the_commands_name_exists() -> None:
    for step in readme_steps().values():
        for command in step:
            files = [command[i + 1] for i, arg in enumerate(command) if arg == "-f"]
            assert all((ROOT / f).exists() for f in files), command


def test_helm_commands_parse_and_render() -> None:
    import helm_python as helm

    for step in readme_steps().values():
        for command in step:
            if command[0] != "helm":
                continue
            opts = _helm_parser().parse_args(command[1:])
            if opts.action == "uninstall":
                continue
            values: dict[str, object] = {}
            for expression in opts.set:
                values = _deep_merge(values, helm.parse_set_string(expression))
            objects = render(ROOT / opts.chart, values, opts.release, opts.namespace,
                             install=opts.action == "install", revision=1)
            assert any(o["kind"] == "Deployment" for o in objects)

"""DIRAC JDL parsing, the JSON model, validation messages and parametric expansion."""

from __future__ import annotations

import pytest

from junodcs.core.errors import DCSError
from junodcs.wms import jdl
from junodcs.wms.models import JobDescription, expand

DIRAC_JDL = r'''
// a user's job, as written for DIRAC
[
    JobName = "sim_%n";
    Executable = "run.sh";          # the payload
    Arguments = "-seed %s -out \"x y\"";
    /* inputs,
       two lines */
    InputSandbox = {"run.sh", "LFN:/juno/user/a/alice/cfg.py",};
    InputData = {"LFN:/juno/raw/f1.root"};
    OutputSandbox = {"std.out", "std.err", "*.log"};
    OutputData = {"out_%(energy)s.root"};
    OutputSE = "IHEP-EOS";
    Site = {"GRID.IHEP.cn", "GRID.CNAF.it"};
    BannedSites = "GRID.CNAF.it";
    CPUTime = 3600;
    Priority = 5;
    Tag = "juno";
    NumberOfProcessors = 4;
    MaxRAM = "8 GB";
    WholeNode = false;
    JobType = User;
    Parameters = 10; ParameterStart = 1; ParameterStep = 2; ParameterFactor = 1;
    Parameters.energy = {1, 2.5, 3, 4, 5, 6, 7, 8, 9, 10};
    LogLevel = "DEBUG";
]
'''


def test_dirac_jdl_parses_and_expands() -> None:
    exp = expand(DIRAC_JDL, limit=100)
    assert exp.count == 10
    first, last = exp.job(0, 100), exp.job(9, 109)
    assert first.Arguments == '-seed 1 -out "x y"' and last.Arguments == '-seed 19 -out "x y"'
    assert first.JobName == "sim_0" and last.JobName == "sim_9"
    assert first.OutputData == ["out_1.root"] and exp.job(1).OutputData == ["out_2.5.root"]
    assert first.InputData == ["/juno/raw/f1.root"]
    assert first.InputSandbox == ["run.sh", "LFN:/juno/user/a/alice/cfg.py"]
    assert first.OutputSE == ["IHEP-EOS"] and first.Tags == ["juno"] and first.MaxRAM == 8000
    assert first.cores == 4 and "MultiProcessor" in first.requirement_tags()
    assert last.Parameter == 19 and last.ParameterNumber == 9 and last.ParameterValues == {"energy": 10}


def test_bare_attributes_factor_and_job_id_placeholder() -> None:
    exp = expand('Executable = "x"; Arguments = "%s %j %% %n"; Parameters = 4; ParameterStart = 1; '
                 'ParameterStep = 0; ParameterFactor = 3', limit=100)
    assert [exp.job(i, 50 + i).Arguments for i in range(4)] == ["1 50 % 0", "3 51 % 1", "9 52 % 2", "27 53 % 3"]
    listed = expand({"Executable": "x", "Arguments": "%s", "Parameters": ["a", "b"]}, limit=10)
    assert [listed.job(i).Arguments for i in range(2)] == ["a", "b"]


def test_case_insensitive_names_and_json_round_trip() -> None:
    exp = expand('[ executable = "x"; cputime = 500; site = "GRID.IHEP.cn" ]', limit=1)
    assert exp.template.CPUTime == 500 and exp.template.Site == ["GRID.IHEP.cn"]
    text = exp.template.to_jdl()
    again = JobDescription.model_validate(jdl.parse(text)[0])
    assert again == exp.template


@pytest.mark.parametrize(("text", "code", "message"), [
    ('[ Executable = "x";\n  Arguments = "a"\n  CPUTime = 500 ]', "jdl-syntax",
     "JDL line 3, column 3: expected ';' after the value of Arguments"),
    ('Executable = "abc', "jdl-syntax", "line 1, column 14: string is not closed"),
    ('Executable = "x";\nInputSandbox = {"a", "b";', "jdl-syntax", "line 2, column 25: expected ',' or '}'"),
    ('Executable = "x"; Executable = "y"', "jdl-syntax", "already set on line 1"),
    ('/* never closed\nExecutable = "x"', "jdl-syntax", "line 1, column 1: comment opened with /*"),
    ('Executable = "x" ] ', "jdl-syntax", "column 18: expected ';' after the value of Executable, found ']'"),
    ('Executable = "x";\nCPUTime = 50;', "invalid-job", "CPUTime (line 2): Input should be greater than or equal to 100"),
    ('Executable = "";', "invalid-job", "Executable (line 1)"),
    ('Arguments = "a";', "invalid-job", "Executable: Field required"),
    ('Executable = "x";\nExectuable = "y";', "invalid-job", "unknown attribute 'Exectuable' (did you mean Executable?) (line 2)"),
    ('Executable = "x"; Priority = 11', "invalid-job", "Priority"),
    ('Executable = "x"; InputData = {"/juno//a"}', "invalid-job", "is not an LFN"),
    ('Executable = "x"; Site = "A"; BannedSites = "A"', "invalid-job", "Site minus BannedSites is empty"),
    ('Executable = "x"; MaxRAM = "lots"', "invalid-job", "MaxRAM"),
    ('Executable = "x"; Parameters = 0', "bad-parameters", "at least 1"),
    ('Executable = "x"; Parameters = 2.5', "bad-parameters", "whole number"),
    ('Executable = "x"; Parameters = {}', "bad-parameters", "empty list"),
    ('Executable = "x"; Parameters = 20001', "too-many-jobs", "at most 10000 jobs"),
    ('Executable = "x"; Parameters = 40; ParameterStart = 2; ParameterFactor = 1000', "bad-parameters", "beyond"),
    ('Executable = "x"; Parameters = {1, 2}; Parameters.e = {1, 2, 3}', "bad-parameters", "differ in length"),
    ('Executable = "x"; Arguments = "%(nope)s"; Parameters = 2', "bad-parameters", "names no sequence"),
    ('Executable = "x"; ParameterStep.e = 2', "invalid-job", "without Parameters.e"),
])
def test_bad_descriptions_are_refused_clearly(text: str, code: str, message: str) -> None:
    with pytest.raises(DCSError) as info:
        exp = expand(text, limit=10_000)
        for i in range(exp.count):
            exp.job(i)
    assert info.value.code == code
    assert message in info.value.detail, info.value.detail


def test_jdl_writer_escapes() -> None:
    text = jdl.dumps({"Executable": 'a "b" \\ c', "Tags": ["x", "y"], "CPUTime": 100, "WholeNode": True})
    assert jdl.parse(text)[0] == {"Executable": 'a "b" \\ c', "Tags": ["x", "y"], "CPUTime": 100, "WholeNode": True}

"""caffelike's zoo of real nets (prototxts, solvers, weights), served as `caffelike.zoo`."""
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent


def path(*parts: str) -> str:
    """The path of a zoo file, e.g. path("lenet", "lenet.prototxt")."""
    return str(ROOT.joinpath(*parts))

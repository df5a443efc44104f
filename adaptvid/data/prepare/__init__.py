"""`adaptvid prepare`: the benchmarks' official annotation files to adaptvid list files (train.txt,
val.txt, test.txt, classes.txt), or for MSR-VTT and MSVD to captions files (train.jsonl, test.jsonl), plus
missing.txt (annotated videos not on disk) and report.txt."""

from .captioned import prepare_msrvtt, prepare_msvd
from .common import PrepareReport, VideoIndex, list_line, write_prepared
from .hmdb51 import prepare_hmdb51
from .k600_zeroshot import novel_classes, prepare_k600_zeroshot, zeroshot_split
from .kinetics import kinetics_classes, prepare_kinetics, read_kinetics_csv
from .ssv2 import prepare_ssv2, template_class
from .ucf101 import prepare_ucf101

__all__ = ["PrepareReport", "VideoIndex", "list_line", "write_prepared", "prepare_kinetics", "read_kinetics_csv",
           "kinetics_classes", "prepare_k600_zeroshot", "novel_classes", "zeroshot_split", "prepare_ssv2",
           "template_class", "prepare_ucf101", "prepare_hmdb51", "prepare_msrvtt", "prepare_msvd"]

"""caffelike's benchmarks: speed shown by tables of ratios measured in the same run, never by timed tests.

    python bench/run.py [--quick] [--only nets,opencv,training,pylayer,time] [--json bench/results.json]

zoo_nets      the zoo nets at benchmark batch sizes, with seeded weights saved as a .caffemodel
handwritten   the same nets written by hand as torch modules, loaded from caffelike's params, checked blob by blob
timing        the one timer: warm-up, cuda synchronize, interleaved rounds, medians
net_speed     forward and forward+backward, caffelike vs hand-written torch, eager and compiled
opencv_dnn    inference in OpenCV's dnn module (cv2.dnn.readNetFromCaffe) on the same files
training      a LeNet training run on the bundled digits beside the data pipeline's own throughput
pylayer_cost  what a Python layer costs: BlankSquare (numpy), none, and a TorchLayer doing the same
caffe_time    `caffelike time` output, in `caffe time`'s format
run           the command line: runs the sections, prints the tables, writes the JSON
op_profile    where the time goes: self CPU time per op, caffelike vs hand-written (a command of its own)
data_pipeline the Data layer's throughput on an LMDB (also a command of its own)
"""

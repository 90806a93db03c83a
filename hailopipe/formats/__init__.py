"""The file formats, each read and written in one module, with one set of types (`streams`):

    hn              the float network as HN JSON, its weights as `<net>/<layer>/kernel:0` npz keys
    qnpz            the quantized network as .q.npz arrays (`<net>/<layer>/<param>:0`)
    har             the Hailo archive: metadata, HN, .npz, .q.npz [, the compiled file]
    tflite          the float TFLite model the parse step reads
    ehef            the emulator's compiled file (magic EHEF: never taken for a real HEF)
    hailo_hef       real HEFs made by Hailo's compiler, read without HailoRT (+ hef_schema)
    parse_hef       any compiled file described as `hailortcli parse-hef` does
    compile_report  the compile report's layout
    streams         the stream, quantization and format records HailoRT reports
"""

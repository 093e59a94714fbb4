{
  "targets": [
    {
      "target_name": "reimage_native",
      "sources": ["native/reimage_native.c"],
      "cflags_c": ["-std=gnu11", "-Wall", "-Wextra", "-fvisibility=hidden"]
    }
  ]
}

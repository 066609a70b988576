/* Prints, as JSON, the offsets of the CPython structure fields the Python frame walk reads
 * (bpf/python.h) and the symbolizer decodes (symbolize/python.py), for the version whose
 * headers it is compiled against (with the internal headers: -I include/python3.X/internal).
 * Used by tools/gen_python_layouts.py. */
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <frameobject.h>
#if PY_VERSION_HEX >= 0x03090000
#include <internal/pycore_runtime.h>
#endif
#include <internal/pycore_pystate.h>
#if PY_VERSION_HEX >= 0x030b0000
#include <internal/pycore_frame.h>
#include <internal/pycore_interp.h>
#elif PY_VERSION_HEX >= 0x03090000
#include <internal/pycore_interp.h>
#endif
#include <stdio.h>
#define P(name, val) printf("\"%s\": %ld,\n", name, (long)(val))
int main(void) {
	printf("{\n");
	P("hex_version", PY_VERSION_HEX);
	P("runtime_interpreters_head", offsetof(_PyRuntimeState, interpreters.head));
#if PY_VERSION_HEX >= 0x030b0000
	P("interp_tstate_head", offsetof(PyInterpreterState, threads.head));
#else
	P("interp_tstate_head", offsetof(PyInterpreterState, tstate_head));
#endif
	P("tstate_next", offsetof(PyThreadState, next));
	P("tstate_thread_id", offsetof(PyThreadState, thread_id));
#if PY_VERSION_HEX >= 0x030d0000
	P("tstate_frame", offsetof(PyThreadState, current_frame));
	P("cframe_current_frame", -1);
#elif PY_VERSION_HEX >= 0x030b0000
	P("tstate_frame", offsetof(PyThreadState, cframe));
	P("cframe_current_frame", offsetof(_PyCFrame, current_frame));
#else
	P("tstate_frame", offsetof(PyThreadState, frame));
	P("cframe_current_frame", -1);
#endif
#if PY_VERSION_HEX >= 0x030b0000
	P("frame_back", offsetof(_PyInterpreterFrame, previous));
#if PY_VERSION_HEX >= 0x030d0000
	P("frame_code", offsetof(_PyInterpreterFrame, f_executable));
	P("frame_lasti", offsetof(_PyInterpreterFrame, instr_ptr));
#else
	P("frame_code", offsetof(_PyInterpreterFrame, f_code));
	P("frame_lasti", offsetof(_PyInterpreterFrame, prev_instr));
#endif
#if PY_VERSION_HEX < 0x030c0000
	P("frame_is_entry", offsetof(_PyInterpreterFrame, is_entry));
#else
	P("frame_is_entry", -1);
#endif
	P("frame_owner", offsetof(_PyInterpreterFrame, owner));
	P("code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
	P("code_qualname", offsetof(PyCodeObject, co_qualname));
	P("code_linetable", offsetof(PyCodeObject, co_linetable));
#else
	P("frame_back", offsetof(PyFrameObject, f_back));
	P("frame_code", offsetof(PyFrameObject, f_code));
	P("frame_lasti", offsetof(PyFrameObject, f_lasti));
	P("frame_is_entry", -1);
	P("frame_owner", -1);
	P("code_adaptive", -1);
	P("code_qualname", -1);
#if PY_VERSION_HEX >= 0x030a0000
	P("code_linetable", offsetof(PyCodeObject, co_linetable));
#else
	P("code_linetable", offsetof(PyCodeObject, co_lnotab));
#endif
#endif
	P("code_filename", offsetof(PyCodeObject, co_filename));
	P("code_name", offsetof(PyCodeObject, co_name));
	P("code_firstlineno", offsetof(PyCodeObject, co_firstlineno));
	P("unicode_length", offsetof(PyASCIIObject, length));
	P("unicode_state", offsetof(PyASCIIObject, state));
	P("unicode_ascii_data", sizeof(PyASCIIObject));
	P("unicode_compact_data", sizeof(PyCompactUnicodeObject));
	P("bytes_size", offsetof(PyVarObject, ob_size));
	P("bytes_data", offsetof(PyBytesObject, ob_sval));
	printf("\"end\": 0\n}\n");
	return 0;
}

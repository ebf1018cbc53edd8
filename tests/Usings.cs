global using NUnit.Framework;
global using Qwen3Cuda.Model;

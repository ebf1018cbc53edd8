namespace Qwen3Cuda.Model.Templates;

/// <summary>Template syntax tree. Every node records where it starts in the template source.</summary>
public abstract record JinjaNode(int Line, int Column);

// Statements
public sealed record TextNode(string Text, int Line, int Column) : JinjaNode(Line, Column);
public sealed record CommentNode(int Line, int Column) : JinjaNode(Line, Column);
public sealed record OutputNode(JinjaNode Expression, int Line, int Column) : JinjaNode(Line, Column);
public sealed record IfNode(JinjaNode Test, List<JinjaNode> Body, List<JinjaNode> Else, int Line, int Column) : JinjaNode(Line, Column);
public sealed record ForNode(JinjaNode Target, JinjaNode Iterable, JinjaNode? Filter, List<JinjaNode> Body, List<JinjaNode> Else, int Line, int Column) : JinjaNode(Line, Column);
public sealed record SetNode(JinjaNode Target, JinjaNode? Value, List<JinjaNode> Body, int Line, int Column) : JinjaNode(Line, Column);
public sealed record MacroNode(string Name, List<JinjaNode> Parameters, List<JinjaNode> Body, int Line, int Column) : JinjaNode(Line, Column);
public sealed record CallBlockNode(CallNode Call, List<JinjaNode>? CallerParameters, List<JinjaNode> Body, int Line, int Column) : JinjaNode(Line, Column);
public sealed record FilterBlockNode(JinjaNode Filter, List<JinjaNode> Body, int Line, int Column) : JinjaNode(Line, Column);
public sealed record BreakNode(int Line, int Column) : JinjaNode(Line, Column);
public sealed record ContinueNode(int Line, int Column) : JinjaNode(Line, Column);

// Expressions
public sealed record LiteralNode(JinjaValue Value, int Line, int Column) : JinjaNode(Line, Column);
public sealed record NameNode(string Name, int Line, int Column) : JinjaNode(Line, Column);
public sealed record ListNode(List<JinjaNode> Items, bool IsTuple, int Line, int Column) : JinjaNode(Line, Column);
public sealed record DictNode(List<(JinjaNode Key, JinjaNode Value)> Items, int Line, int Column) : JinjaNode(Line, Column);
/// <summary>obj.name (Computed false) or obj[expr] (Computed true).</summary>
public sealed record MemberNode(JinjaNode Object, JinjaNode Property, bool Computed, int Line, int Column) : JinjaNode(Line, Column);
public sealed record SliceNode(JinjaNode? Start, JinjaNode? Stop, JinjaNode? Step, int Line, int Column) : JinjaNode(Line, Column);
public sealed record CallNode(JinjaNode Callee, List<JinjaNode> Arguments, int Line, int Column) : JinjaNode(Line, Column);
public sealed record KeywordArgumentNode(string Name, JinjaNode Value, int Line, int Column) : JinjaNode(Line, Column);
public sealed record SpreadNode(JinjaNode Value, bool Keywords, int Line, int Column) : JinjaNode(Line, Column);
public sealed record UnaryNode(string Operator, JinjaNode Operand, int Line, int Column) : JinjaNode(Line, Column);
public sealed record BinaryNode(string Operator, JinjaNode Left, JinjaNode Right, int Line, int Column) : JinjaNode(Line, Column);
/// <summary>operand | name or operand | name(args): Filter is a NameNode or a CallNode.</summary>
public sealed record FilterNode(JinjaNode Operand, JinjaNode Filter, int Line, int Column) : JinjaNode(Line, Column);
public sealed record TestNode(JinjaNode Operand, bool Negate, string Test, int Line, int Column) : JinjaNode(Line, Column);
public sealed record TernaryNode(JinjaNode Condition, JinjaNode IfTrue, JinjaNode IfFalse, int Line, int Column) : JinjaNode(Line, Column);
/// <summary>`a if cond` without else: a when cond is true, else undefined.</summary>
public sealed record SelectNode(JinjaNode Value, JinjaNode Condition, int Line, int Column) : JinjaNode(Line, Column);
